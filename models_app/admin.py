"""Console pages for the registry: models, versions with checksum/size/status, and an upload form."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from hotswap.exceptions import ApplicationError
from models_app import services
from models_app.models import NAME_PATTERN, SEMVER_PATTERN, AIModel, Framework, ModelVersion
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


class ModelVersionInline(admin.TabularInline):
    """Versions of a model, read-only (uploads go through the upload form)."""

    model = ModelVersion
    fields = ["version", "status", "sha256", "size_bytes", "detected_format", "uploaded_by", "uploaded_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    """Models with their versions."""

    list_display = ["name", "framework", "task", "owner", "version_count", "updated_at"]
    list_filter = ["framework", "task"]
    search_fields = ["name", "description", "tags"]
    readonly_fields = ["name", "framework", "owner", "created_at", "updated_at"]
    inlines = [ModelVersionInline]

    @admin.display(description="versions")
    def version_count(self, obj: AIModel) -> int:
        return obj.versions.count()

    def has_add_permission(self, request) -> bool:
        return False  # models come into being with their first uploaded version


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

    list_display = ["model_id", "status", "detected_format", "short_sha256", "size", "uploaded_by", "uploaded_at"]
    list_filter = ["status", "detected_format", "ai_model__framework"]
    search_fields = ["model_id", "sha256", "ai_model__name"]
    list_select_related = ["ai_model", "uploaded_by"]
    readonly_fields = [
        "model_id", "ai_model", "version", "status", "sha256", "size_bytes", "detected_format", "format_details",
        "storage_location", "original_filename", "input_schema", "output_schema", "target_device_type",
        "min_memory_mb", "accelerator", "uploaded_by", "uploaded_at", "deprecated_at",
    ]
    exclude = ["storage_key"]
    actions = ["deprecate_selected"]

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
