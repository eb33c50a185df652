"""Console pages for the registry: models, versions with checksum/size/status, and an upload form."""

import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db import models
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from hotswap.exceptions import ApplicationError
from hotswap.lib.admin import ReadOnlyTabularInline
from hotswap.lib.untrusted import UntrustedJSONDecoder
from models_app import services
from models_app.models import NAME_PATTERN, SEMVER_PATTERN, AIModel, Framework, ModelVersion, ValidationReport
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from models_app.validation.profiles import HOW_TO_DECLARE
from models_app.validation_runs import (
    effective_profiles,
    input_profiles_check,
    model_version_approve,
    validation_request,
)


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


class ModelVersionInline(ReadOnlyTabularInline):
    """Versions of a model, read-only (uploads go through the upload form)."""

    model = ModelVersion
    fields = ["version", "status", "sha256", "size_bytes", "detected_format", "uploaded_by", "uploaded_at"]


class AIModelForm(forms.ModelForm):
    """A model's settings; its input profiles checked against the model like the API checks them."""

    class Meta:
        model = AIModel
        fields = ["description", "task", "tags", "quality_gates", "accuracy_metric", "input_profiles",
                  "output_tolerances"]

    def clean_input_profiles(self):
        profiles = self.cleaned_data["input_profiles"]
        try:
            return input_profiles_check(profiles, ai_model=self.instance)
        except ApplicationError as exc:
            raise forms.ValidationError([f"{d['field']}: {d['message']}" for d in exc.details]) from exc


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    """Models with their versions."""

    form = AIModelForm

    list_display = ["name", "framework", "task", "owner", "version_count", "updated_at"]
    list_filter = ["framework", "task"]
    search_fields = ["name", "description", "tags"]
    readonly_fields = ["name", "framework", "owner", "created_at", "updated_at"]
    inlines = [ModelVersionInline]
    # Gates are typed by hand: NUL, NaN or deep nesting must be a form error, not a database error (500).
    formfield_overrides = {models.JSONField: {"decoder": UntrustedJSONDecoder}}

    @admin.display(description="versions")
    def version_count(self, obj: AIModel) -> int:
        return obj.versions.count()

    def has_add_permission(self, request) -> bool:
        return False  # models come into being with their first uploaded version


class ApprovalForm(forms.Form):
    """Why an Admin ships a version validation did not pass; kept in the audit trail."""

    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), min_length=10, max_length=2000)


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "—"
    head = format_html_join("", "<th>{}</th>", ((c,) for c in columns))
    body = format_html_join("", "<tr>{}</tr>", (
        (format_html_join("", "<td>{}</td>", ((_cell(row.get(c)),) for c in columns)),) for row in rows))
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    return str(value)


class ValidationReportInline(ReadOnlyTabularInline):
    """Validation history of a version."""

    model = ValidationReport
    fk_name = "version"
    fields = ["status", "summary", "requested_by", "requested_at", "finished_at", "attempts"]


@admin.register(ValidationReport)
class ValidationReportAdmin(admin.ModelAdmin):
    """A validation run shown as tables: steps, metrics, gates, environment."""

    list_display = ["__str__", "status", "summary", "requested_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["version__model_id"]
    readonly_fields = ["version", "status", "summary", "requested_by", "requested_at", "started_at", "finished_at",
                       "attempts", "test_set", "baseline", "profiles_table", "steps_table", "metrics_table",
                       "gates_table", "environment_table"]
    exclude = ["result", "gate_overrides", "gates_applied"]

    @admin.display(description="input profiles")
    def profiles_table(self, obj: ValidationReport) -> str:
        """Per profile: each input's shape, dtype and where it came from, what was guessed, figures, gates."""
        rows = []
        for profile in obj.result.get("profiles", []):
            metrics = profile.get("metrics") or {}
            rows.append({
                "profile": profile.get("name"),
                "source": "shapes guessed" if profile.get("source") == "guessed" else profile.get("source"),
                "inputs": format_html_join(format_html("<br>"), '<code class="profile-input">{} {} {}</code> ({})', (
                    (item["name"], item["dtype"], item["shape"], item["source"]) for item in profile.get("inputs", [])
                )),
                "guessed": format_html_join(format_html("<br>"), "{}{} = {}: {}", (
                    (guess["input"], f"[{guess['axis']}]" + (f" ({guess['dim']})" if guess.get("dim") else "")
                     if "axis" in guess else "", guess["value"], guess["why"])
                    for guess in profile.get("guessed", []))) or "nothing",
                "figures": profile.get("error") or (
                    f"p50 {_cell(metrics.get('latency_p50_ms'))} ms, p99 {_cell(metrics.get('latency_p99_ms'))} ms, "
                    f"{_cell(metrics.get('throughput_ips'))} inferences/s"),
                "gates": format_html_join(format_html("<br>"), "{}: {} (measured {}, threshold {})", (
                    (gate["name"], _cell(gate["passed"]) if gate["passed"] is not None else
                     "not decisive" if gate["detail"].startswith("not decisive") else "n/a",
                     _cell(gate["measured"]), _cell(gate["threshold"])) for gate in profile.get("gates", []))),
            })
        table = _table(rows, ["profile", "source", "inputs", "guessed", "figures", "gates"])
        if any(profile.get("source") == "guessed" for profile in obj.result.get("profiles", [])):
            table = format_html('{}<p class="help">Shapes were guessed: to measure at real shapes, {}. In the console: '
                                'select the version and run "Validate again with input profiles…".</p>',
                                table, HOW_TO_DECLARE)
        return table

    @admin.display(description="steps")
    def steps_table(self, obj: ValidationReport) -> str:
        return _table(obj.result.get("steps", []), ["name", "status", "duration_ms", "detail"])

    @admin.display(description="metrics")
    def metrics_table(self, obj: ValidationReport) -> str:
        metrics = {**obj.result.get("metrics", {}), **{f"baseline {k}": v for k, v in
                                                       (obj.result.get("baseline_deltas") or {}).items()}}
        return _table([{"metric": k, "value": v} for k, v in metrics.items()], ["metric", "value"])

    @admin.display(description="gates")
    def gates_table(self, obj: ValidationReport) -> str:
        return _table(obj.result.get("gates", []), ["name", "threshold", "measured", "passed", "detail"])

    @admin.display(description="environment")
    def environment_table(self, obj: ValidationReport) -> str:
        return _table([{"key": k, "value": v} for k, v in obj.result.get("environment", {}).items()],
                      ["key", "value"])

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ProfilesForm(forms.Form):
    """Input profiles for a version, as the API takes them; checked against the model when submitted."""

    input_profiles = forms.JSONField(
        decoder=UntrustedJSONDecoder, widget=forms.Textarea(attrs={"rows": 8, "cols": 90}),
        initial=[{"name": "640x640", "inputs": {"images": {"shape": [1, 3, 640, 640]}}}],
        help_text='A list of profiles: {"name", "dims": {symbol: size}, "inputs": {input: {"shape", "dtype", '
                  '"value" or "range"}}, "feedback": {output: input}, "samples": test set name}.')


class UploadForm(forms.Form):
    """The admin's upload form; the file goes through the same service as the API."""

    name = forms.RegexField(NAME_PATTERN, max_length=64)
    version = forms.RegexField(SEMVER_PATTERN, max_length=64, help_text="Semantic version, e.g. 1.0.0")
    framework = forms.ChoiceField(choices=Framework.choices)
    sha256 = forms.RegexField(r"^[0-9a-fA-F]{64}$", required=False, help_text="Optional: the checksum to verify")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    artifact = forms.FileField()


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Every version with its checksum, size, status and uploader."""

    list_display = ["model_id", "status_shown", "detected_format", "short_sha256", "size", "uploaded_by",
                    "uploaded_at"]
    list_filter = ["status", "detected_format", "ai_model__framework"]
    search_fields = ["model_id", "sha256", "ai_model__name"]
    list_select_related = ["ai_model", "uploaded_by"]
    readonly_fields = [
        "model_id", "ai_model", "version", "status", "sha256", "size_bytes", "detected_format", "format_details",
        "storage_location", "original_filename", "input_schema", "output_schema", "target_device_type",
        "min_memory_mb", "accelerator", "uploaded_by", "uploaded_at", "deprecated_at", "approved_by", "approved_at",
        "approval_reason", "scrubbed_at", "scrub_error", "profiles_in_use",
    ]
    exclude = ["storage_key", "input_profiles"]
    actions = ["deprecate_selected", "validate_again", "validate_with_profiles", "approve_selected"]

    @admin.display(description="input profiles")
    def profiles_in_use(self, obj: ModelVersion) -> str:
        profiles = effective_profiles(obj)
        if not profiles:
            return format_html("none: validation guesses shapes. To measure at real shapes, {}; or select the "
                               'version and run "Validate again with input profiles…".', HOW_TO_DECLARE)
        return format_html("<code>{}</code> ({})", json.dumps(profiles),
                           "this version's own" if obj.input_profiles else "the model's")

    @admin.action(description="Validate again with input profiles…", permissions=["validate"])
    def validate_with_profiles(self, request, queryset):
        form = ProfilesForm(request.POST if "input_profiles" in request.POST else None)
        if form.is_valid():
            for version in queryset:
                try:
                    validation_request(version=version, requested_by=request.user,
                                       input_profiles=form.cleaned_data["input_profiles"])
                except ApplicationError as exc:
                    details = "; ".join(f"{d['field']}: {d['message']}" for d in exc.details or [])
                    self.message_user(request, f"{version.model_id}: {details or exc.message}", messages.ERROR)
                else:
                    self.message_user(request, f"Queued validation of {version.model_id} at its new input profiles.",
                                      messages.SUCCESS)
            return None
        return self._action_form(request, queryset, form, "Validate again with input profiles",
                                 "admin/models_app/validate_with_profiles.html")

    def _action_form(self, request, queryset, form, title: str, template: str) -> TemplateResponse:
        """The intermediate page of an action that needs a form (templates extend action_form.html)."""
        context = {**self.admin_site.each_context(request), "form": form, "versions": queryset,
                   "opts": self.model._meta, "title": title, "action_checkbox_name": ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, template, context)
    inlines = [ValidationReportInline]

    @admin.display(description="status", ordering="status")
    def status_shown(self, obj: ModelVersion) -> str:
        if obj.status == ModelVersion.Status.CORRUPT:
            return format_html('<strong class="errornote" title="{}">corrupt: not shipped</strong>', obj.scrub_error)
        return obj.status

    @admin.display(description="sha256")
    def short_sha256(self, obj: ModelVersion) -> str:
        return format_html('<code title="{}">{}…</code>', obj.sha256, obj.sha256[:12])

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: ModelVersion) -> str:
        return _human_size(obj.size_bytes)

    @admin.display(description="artifact")
    def storage_location(self, obj: ModelVersion) -> str:
        return artifact_store().location(obj.storage_key)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # versions are immutable; status changes go through actions

    @admin.action(description="Deprecate selected versions", permissions=["deprecate"])
    def deprecate_selected(self, request, queryset):
        for version in queryset:
            services.model_version_deprecate(model_version=version, actor=request.user)
        self.message_user(request, f"Deprecated {queryset.count()} version(s).", messages.SUCCESS)

    @admin.action(description="Validate again", permissions=["validate"])
    def validate_again(self, request, queryset):
        queued = 0
        for version in queryset:
            try:
                validation_request(version=version, requested_by=request.user)
                queued += 1
            except ApplicationError as exc:
                self.message_user(request, f"{version.model_id}: {exc.message}", messages.ERROR)
        self.message_user(request, f"Queued validation of {queued} version(s).", messages.SUCCESS)

    def has_validate_permission(self, request) -> bool:
        return request.user.has_perm("models_app.validate_modelversion")

    @admin.action(description="Approve for distribution (Admin, with a reason)…", permissions=["approve"])
    def approve_selected(self, request, queryset):
        form = ApprovalForm(request.POST if "reason" in request.POST else None)
        if form.is_valid():
            for version in queryset:
                try:
                    model_version_approve(version=version, actor=request.user, reason=form.cleaned_data["reason"])
                except ApplicationError as exc:
                    self.message_user(request, f"{version.model_id}: {exc.message}", messages.ERROR)
                else:
                    self.message_user(request, f"Approved {version.model_id}.", messages.SUCCESS)
            return None
        return self._action_form(request, queryset, form, "Approve for distribution", "admin/models_app/approve.html")

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("models_app.approve_modelversion")

    def has_deprecate_permission(self, request) -> bool:
        return request.user.has_perm("models_app.deprecate_modelversion")

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("models_app.upload_modelversion")

    def delete_model(self, request, obj: ModelVersion) -> None:
        services.model_version_delete(model_version=obj, actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        for version in queryset:
            services.model_version_delete(model_version=version, actor=request.user)

    def get_urls(self):
        upload = path("upload/", self.admin_site.admin_view(self.upload_view), name="models_app_modelversion_upload")
        return [upload, *super().get_urls()]

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("admin:models_app_modelversion_upload")

    def upload_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                artifact = PendingArtifact.receive(
                    artifact_store(), data["artifact"].chunks(), filename=data["artifact"].name,
                    max_bytes=settings.ARTIFACT_MAX_BYTES,
                )
                version, created = services.model_version_upload(
                    artifact=artifact, name=data["name"], version=data["version"], framework=data["framework"],
                    declared_sha256=data["sha256"] or "", description=data["description"], uploaded_by=request.user,
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                verb = "Uploaded" if created else "Already present (identical bytes):"
                self.message_user(request, f"{verb} {version.model_id}, sha256 {version.sha256}.", messages.SUCCESS)
                return redirect(reverse("admin:models_app_modelversion_change", args=[version.pk]))
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": "Upload a model version"}
        return TemplateResponse(request, "admin/models_app/upload.html", context)
