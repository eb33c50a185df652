"""The console's dashboard page, and the fragments its script redraws in place."""

from __future__ import annotations

from datetime import datetime

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from hotswap.dashboard.charts import distribution_charts, number, stacked_bar, versions_by_model
from hotswap.dashboard.selectors import (
    RECENT,
    dashboard_distributions,
    distribution_series,
    fleet_by_region,
    fleet_versions_by_model,
)
from rollouts.admin import progress_bar
from rollouts.models import Distribution, Stage
from rollouts.selectors import distribution_status

REFRESH_MS = 10_000
CHARTS_REFRESH_MS = 30_000  # telemetry is rolled up per minute: a faster redraw would show nothing new
# The script swaps in only answers that carry this header (a lapsed session answers with the login page); its
# value is when to redraw next, in ms (0: nothing more will come).
FRAGMENT_HEADER = "X-Dashboard-Fragment"
VIEW_PERMISSIONS = ("devices.view_device", "rollouts.view_distribution")  # every console role has both
ONLINE_COLORS = {"online": "#3a9a3a", "offline": "#b8b8b8"}


def _live_rows(live: dict | None) -> list[dict]:
    """The current stage's new-version figures against the baseline, as the judge sees them now."""
    if not live:
        return []

    def shown(value: float | None, scale: float, unit: str) -> str:
        return "—" if value is None else f"{number(value * scale)} {unit}"

    change = live.get("latency_increase_pct")
    return [
        {"label": "p99 latency", "new": shown(live["new"]["latency_p99_ms"], 1, "ms"),
         "baseline": shown(live["baseline"]["latency_p99_ms"], 1, "ms"),
         "change": "—" if change is None else f"{change:+g} %"},
        {"label": "error rate", "new": shown(live["new"]["error_rate"], 100, "%"),
         "baseline": shown(live["baseline"]["error_rate"], 100, "%"), "change": ""},
        {"label": "devices reporting", "new": live["new"]["devices"], "baseline": live["baseline"]["devices"],
         "change": ""},
    ]


def charts_context(distribution: Distribution, *, now: datetime) -> dict:
    """A distribution's two charts, and how often its page should redraw them (0: nothing more will come)."""
    metrics = distribution_series(distribution=distribution, now=now)
    return {"charts": distribution_charts(metrics, distribution=distribution, now=now),
            "refresh_url": reverse("dashboard-distribution-charts", args=[distribution.pk]),
            "refresh_ms": CHARTS_REFRESH_MS if now < metrics["until"] else 0}


def distribution_panel(distribution: Distribution, *, now: datetime) -> dict:
    """What the dashboard shows of one distribution: status, progress, live comparison, charts."""
    status = distribution_status(distribution=distribution, now=now)
    index = status["current_stage"]
    current = status["stages"][index] if index is not None else None
    if current:
        current = {**current, "status_label": Stage.Status(current["status"]).label.lower()}
    return {"distribution": distribution, "status": status, "key": f"distribution-{distribution.pk}",
            "bar": progress_bar(status["progress"]), "current": current, "live": _live_rows(status["live_metrics"]),
            **charts_context(distribution, now=now)}


def dashboard_context(*, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    regions = [{**row, "bar": stacked_bar([("online", row["online"]), ("offline", row["offline"])], ONLINE_COLORS)}
               for row in fleet_by_region()]
    return {
        "now": now,
        "regions": regions,
        "fleet": {key: sum(row[key] for row in regions) for key in ("online", "offline", "total")},
        "models": versions_by_model(fleet_versions_by_model()),
        "distributions": [distribution_panel(d, now=now) for d in dashboard_distributions(now=now)],
        "recent_hours": int(RECENT.total_seconds() // 3600),
        "refresh_ms": REFRESH_MS,
    }


def _require_view(request: HttpRequest) -> None:
    if not request.user.has_perms(VIEW_PERMISSIONS):
        raise PermissionDenied


def _fragment(request: HttpRequest, template: str, context: dict) -> TemplateResponse:
    response = TemplateResponse(request, template, context)
    response[FRAGMENT_HEADER] = str(context["refresh_ms"])
    return response


def dashboard(request: HttpRequest) -> HttpResponse:
    """The whole page, or (?fragment=1) the part its script redraws every REFRESH_MS."""
    _require_view(request)
    context = dashboard_context()
    if request.GET.get("fragment"):
        return _fragment(request, "admin/hotswap/_dashboard_body.html", context)
    return TemplateResponse(request, "admin/hotswap/dashboard.html",
                            {**admin.site.each_context(request), "title": "Dashboard", **context})


def distribution_charts_fragment(request: HttpRequest, distribution_id: int) -> HttpResponse:
    """One distribution's charts, which its console page redraws every CHARTS_REFRESH_MS."""
    _require_view(request)
    distribution = Distribution.objects.select_related("version", "version_b").filter(pk=distribution_id).first()
    if distribution is None:
        raise Http404("No such distribution.")
    return _fragment(request, "admin/rollouts/distribution/_charts.html",
                     charts_context(distribution, now=timezone.now()))
