"""Console pages for rollouts: distributions with live progress, the operator's buttons, and a create form."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from devices.models import ModelSlot
from hotswap.exceptions import ApplicationError
from rollouts import assignment_states as states
from rollouts.criteria import DEFAULT_CRITERIA
from rollouts.forms import ActionForm, DistributionCreateForm
from rollouts.models import Assignment, Distribution, Stage
from rollouts.selectors import distribution_status
from rollouts.services import (
    distribution_abort,
    distribution_approve,
    distribution_create,
    distribution_pause,
    distribution_resume,
    distribution_rollback,
    stage_current,
)
from rollouts.strategies import iso_duration
from rollouts.transitions import distribution_can

D = Distribution.Status
S = Stage.Status
POLL_MS = 3000
# Segments of a progress bar, in drawing order.
PARTS = ("active", "failed", "installing", "pending", "rolled_back")


@dataclass(frozen=True)
class Action:
    """An operator's button: what it says, what the confirmation asks, which permission it needs."""

    label: str
    question: str
    permission: str  # "change" or "rollback"
    danger: bool = False


ACTIONS = {
    "approve": Action("Approve", "Approve the stage waiting at its manual gate? The next stage starts.", "change"),
    "pause": Action("Pause", "Pause the distribution? No new stage starts; devices already offered the version go "
                             "on installing it.", "change"),
    "resume": Action("Resume", "Resume the distribution? A halt it was paused for is accepted and not raised "
                               "again.", "change"),
    "abort": Action("Abort", "Abort the distribution for good? Nothing more is offered; devices keep what they "
                             "installed (roll back to undo that).", "change", danger=True),
    "rollback": Action("Rollback", "Roll back? Every device this distribution touched goes back to the version it "
                                   "ran before.", "rollback", danger=True),
}
_TARGET_STATUS = {"pause": D.PAUSED, "abort": D.ABORTED, "rollback": D.ROLLED_BACK}


def action_refusal(action: str, distribution: Distribution, stage: Stage | None) -> str | None:
    """Why `action` is not possible in the distribution's current state, or None when it is."""
    status = distribution.get_status_display().lower()
    if action == "approve":
        if distribution.status not in (D.RUNNING, D.PAUSED) or stage is None or stage.status != S.AWAITING_APPROVAL:
            return "Nothing waits for approval."
        return None
    if action == "resume":
        # The map also allows scheduled → running, but that is a start, not a resume.
        return None if distribution.status == D.PAUSED else "Only a paused distribution can be resumed."
    if not distribution_can(distribution, _TARGET_STATUS[action]):
        return f"Not possible while the distribution is {status}."
    return None


def _progress_from_counts(counts: dict[str, int]) -> dict[str, int]:
    return {"active": counts.get(states.A.ACTIVE, 0), "failed": sum(counts.get(state, 0) for state in states.FAILED),
            "installing": sum(counts.get(state, 0) for state in states.IN_FLIGHT),
            "pending": counts.get(states.A.PENDING, 0), "rolled_back": counts.get(states.A.ROLLED_BACK, 0)}


def progress_bar(progress: dict) -> dict:
    """A stacked bar: each part's count and width, and a one-line summary (the page and its poll share it)."""
    total = sum(progress.get(part, 0) for part in PARTS)
    parts = [{"kind": part, "count": progress.get(part, 0),
              "percent": round(100 * progress.get(part, 0) / total, 2) if total else 0} for part in PARTS]
    words = [f"{p['count']} {p['kind'].replace('_', ' ')}" for p in parts if p["count"]]
    return {"total": total, "parts": parts, "summary": f"{' · '.join(words) or 'nothing'} of {total}"}


def _bar_html(bar: dict) -> str:
    segments = format_html_join("", '<span class="part {}" style="width: {}%" title="{} {}"></span>',
                                ((p["kind"], p["percent"], p["count"], p["kind"]) for p in bar["parts"]))
    return format_html('<span class="rollout-bar small">{}</span> <small>{}</small>', segments, bar["summary"])


def rollback_progress(distribution: Distribution) -> dict | None:
    """For a rolled-back distribution: how many of its devices run their previous version of the model again
    (or no longer run it, when they did not have it before)."""
    if distribution.status != D.ROLLED_BACK:
        return None
    touched = Assignment.objects.filter(distribution=distribution, state=Assignment.State.ROLLED_BACK)
    running = ModelSlot.objects.filter(device=OuterRef("device"), ai_model=distribution.ai_model_id,
                                       running_version__isnull=False).values("running_version")[:1]
    back = touched.annotate(running=Subquery(running)).filter(
        Q(running=F("previous_version")) | Q(previous_version__isnull=True, running__isnull=True)).count()
    total = touched.count()
    return {"back": back, "total": total, "percent": round(100 * back / total, 2) if total else 100,
            "summary": f"{back} of {total} device(s) back on their previous version"}


def _target_text(target: dict) -> str:
    return "; ".join(f"{key.replace('_', ' ')}: {', '.join(value) if isinstance(value, list) else value}"
                     for key, value in target.items())


def _criteria_in_form_order(criteria: dict) -> dict:
    # jsonb keeps keys sorted by length; the page lists them as the create form does.
    return {**{key: criteria[key] for key in DEFAULT_CRITERIA if key in criteria}, **criteria}


def _attach_page_progress(distributions: list[Distribution]) -> None:
    """Overall progress and current stage of a changelist page: two queries for the page, not two per row."""
    ids = [d.pk for d in distributions]
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for row in (Assignment.objects.filter(distribution_id__in=ids).values("distribution_id", "state")
                .annotate(n=Count("id"))):
        counts[row["distribution_id"]][row["state"]] = row["n"]
    current = {stage.distribution_id: stage for stage in Stage.objects.filter(distribution_id__in=ids)
               .exclude(status=S.PASSED).order_by("distribution_id", "index").distinct("distribution_id")}
    for distribution in distributions:
        distribution.console_bar = progress_bar(_progress_from_counts(counts[distribution.pk]))
        distribution.console_stage = current.get(distribution.pk)


class DistributionChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        _attach_page_progress(list(self.result_list))  # fills the page's queryset cache the template then reads


@admin.register(Distribution)
class DistributionAdmin(admin.ModelAdmin):
    """Distributions: status and progress; a page per distribution with its stages, history and buttons."""

    list_display = ["__str__", "versions", "strategy", "status_label", "progress", "current_stage", "device_count",
                    "scheduled_at", "created_by"]
    list_filter = ["status", "strategy", "ai_model"]
    search_fields = ["name", "version__model_id", "version_b__model_id"]
    list_select_related = ["version", "version_b", "created_by"]
    show_full_result_count = False

    class Media:
        css = {"all": ["rollouts/console.css"]}
        js = ["rollouts/console.js"]

    def get_changelist(self, request: HttpRequest, **kwargs):
        return DistributionChangeList

    @admin.display(description="version")
    def versions(self, obj: Distribution) -> str:
        return f"{obj.version.model_id} vs {obj.version_b.model_id}" if obj.version_b_id else obj.version.model_id

    @admin.display(description="status", ordering="status")
    def status_label(self, obj: Distribution) -> str:
        return format_html('<span class="rollout-status {}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="progress")
    def progress(self, obj: Distribution) -> str:
        if not hasattr(obj, "console_bar"):
            _attach_page_progress([obj])
        return _bar_html(obj.console_bar)

    @admin.display(description="current stage")
    def current_stage(self, obj: Distribution) -> str:
        if not hasattr(obj, "console_stage"):
            _attach_page_progress([obj])
        stage = obj.console_stage
        if stage is None or not obj.is_open:
            return "—"
        return f"{stage.index + 1}. {stage.name}: {stage.get_status_display().lower()}"

    def has_delete_permission(self, request: HttpRequest, obj: Distribution | None = None) -> bool:
        return False  # the audit trail stays; abort or roll back instead

    def may(self, request: HttpRequest, action: str) -> bool:
        if ACTIONS[action].permission == "rollback":
            return request.user.has_perm("rollouts.rollback_distribution")
        return self.has_change_permission(request)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<int:object_id>/status.json", self.admin_site.admin_view(self.status_view),
                 name="{}_{}_status".format(*info)),
            path("<int:object_id>/actions/<slug:action>/", self.admin_site.admin_view(self.action_view),
                 name="{}_{}_action".format(*info)),
            *super().get_urls(),
        ]

    def _distribution(self, request: HttpRequest, object_id) -> Distribution:
        distribution = self.get_object(request, unquote(str(object_id)))
        if distribution is None:
            raise Http404("No such distribution.")
        if not self.has_view_or_change_permission(request, distribution):
            raise PermissionDenied
        return distribution

    def _page_context(self, request: HttpRequest, distribution: Distribution, title: str) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title, "media": self.media,
                "distribution": distribution}

    def _live(self, distribution: Distribution) -> dict:
        """What the page shows and its poll refreshes: status, what it waits for, the bars."""
        status = distribution_status(distribution=distribution)
        rollback = rollback_progress(distribution)
        return {
            "status": status,
            "signature": f"{distribution.status}:{distribution.transitions.count()}",
            "total": progress_bar(status["progress"]),
            "stages": [{**stage, "key": f"stage-{stage['index']}", "bar": progress_bar(stage["progress"]),
                        "soak": iso_duration(stage["soak_seconds"]),
                        "status_label": S(stage["status"]).label} for stage in status["stages"]],
            "rollback": rollback,
            # Nothing moves any more once closed, except devices still returning after a rollback.
            "polling": distribution.is_open or bool(rollback and rollback["back"] < rollback["total"]),
        }

    def status_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        distribution = self._distribution(request, object_id)
        live = self._live(distribution)
        status = live["status"]
        return JsonResponse({
            "signature": live["signature"], "polling": live["polling"], "status": status["status"],
            "status_label": distribution.get_status_display(), "status_reason": status["status_reason"],
            "waiting_for": status["waiting_for"], "current_stage": status["current_stage"], "total": live["total"],
            "stages": [{"index": s["index"], "status": s["status"], "status_label": s["status_label"],
                        "bar": s["bar"]} for s in live["stages"]],
            "rollback": live["rollback"],
        }, encoder=DjangoJSONEncoder)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        distribution = self._distribution(request, object_id)
        live = self._live(distribution)
        stage = stage_current(distribution)
        buttons = []
        for name, action in ACTIONS.items():
            why = action_refusal(name, distribution, stage)
            if why is None and not self.may(request, name):
                why = "Your role may not do this."
            buttons.append({"name": name, "label": action.label, "danger": action.danger, "why": why,
                            "url": reverse("admin:rollouts_distribution_action", args=[distribution.pk, name])})
        current = live["stages"][stage.index] if stage is not None and distribution.is_open else None
        context = {
            **self._page_context(request, distribution, str(distribution)), **live, "buttons": buttons,
            "current": current, "target_text": _target_text(distribution.target),
            "config_json": json.dumps(distribution.config, indent=2),
            "criteria_json": json.dumps(_criteria_in_form_order(distribution.success_criteria), indent=2),
            "transitions": distribution.transitions.select_related("stage").order_by("at", "id"),
            "status_url": reverse("admin:rollouts_distribution_status", args=[distribution.pk]),
            "poll_ms": POLL_MS,
        }
        return TemplateResponse(request, "admin/rollouts/distribution/detail.html", context)

    def action_view(self, request: HttpRequest, object_id: int, action: str) -> HttpResponse:
        if action not in ACTIONS:
            raise Http404("No such action.")
        distribution = self._distribution(request, object_id)
        if not self.may(request, action):
            raise PermissionDenied
        detail = reverse("admin:rollouts_distribution_change", args=[distribution.pk])
        stage = stage_current(distribution)
        if refusal := action_refusal(action, distribution, stage):
            self.message_user(request, refusal, messages.ERROR)
            return redirect(detail)
        ask_winner = action == "approve" and stage.kind == Stage.Kind.AB_TEST
        form = ActionForm(request.POST if request.method == "POST" else None, distribution=distribution,
                          ask_winner=ask_winner, with_reason=action != "approve")
        if request.method == "POST" and form.is_valid():
            try:
                done = self._perform(request, action, distribution, form.cleaned_data)
            except ApplicationError as exc:  # refused, or someone else changed it first
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, done, messages.SUCCESS)
            return redirect(detail)
        context = {
            **self._page_context(request, distribution, f"{ACTIONS[action].label}: {distribution}"),
            "action": ACTIONS[action], "action_name": action, "form": form, "stage": stage, "detail_url": detail,
            "touched": (Assignment.objects.filter(distribution=distribution, sequence__isnull=False,
                                                  state__in=states.OFFERED_ONCE).count()
                        if action == "rollback" else None),
        }
        return TemplateResponse(request, "admin/rollouts/distribution/confirm.html", context)

    @staticmethod
    def _perform(request: HttpRequest, action: str, distribution: Distribution, data: dict) -> str:
        actor, reason = request.user, data.get("reason", "")
        if action == "approve":
            winner = data.get("winner")
            stage = distribution_approve(distribution=distribution, actor=actor, winner=winner)
            return f"Approved {stage.name}" + (f": {winner.model_id} wins." if winner else "; the next stage starts.")
        if action == "pause":
            distribution_pause(distribution=distribution, actor=actor, reason=reason)
            return "Paused: no new stage starts; devices already offered the version go on installing it."
        if action == "resume":
            distribution_resume(distribution=distribution, actor=actor, reason=reason)
            return "Resumed."
        if action == "abort":
            distribution_abort(distribution=distribution, actor=actor, reason=reason)
            return "Aborted: nothing more is offered; devices keep what they installed (Rollback undoes that)."
        reverted = distribution_rollback(distribution=distribution, actor=actor, reason=reason)
        return f"Rolled back: {reverted} device(s) go back to their previous version."

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = DistributionCreateForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                distribution = distribution_create(**form.cleaned_data["service"], actor=request.user)
            except ApplicationError as exc:
                form.add_service_error(exc)
            else:
                self.message_user(request, f"Created {distribution}: {distribution.get_strategy_display()} "
                                           f"({distribution.strategy_reason}), {distribution.device_count} "
                                           f"device(s) in {distribution.stages.count()} stage(s).", messages.SUCCESS)
                return redirect("admin:rollouts_distribution_change", distribution.pk)
        context = {**self._page_context(request, None, "Create a distribution"), "form": form}
        return TemplateResponse(request, "admin/rollouts/distribution/create.html", context)
