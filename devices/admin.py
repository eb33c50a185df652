"""Console pages for the fleet: devices (model slots; decommission, credentials, desired version), keys, reports."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template import engines
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from devices import selectors
from devices.models import Device, DeviceCredential, EnrollmentKey, InstallReport, MetricWindow, ModelSlot
from devices.services.credentials import device_credential_issue, device_credential_revoke
from devices.services.desired_state import desired_model_remove, desired_state_set
from devices.services.enrollment import enrollment_key_create, enrollment_key_revoke
from devices.services.registry import (
    RESERVED_DEVICE_IDS,
    UPDATABLE_FIELDS,
    device_decommission,
    device_preregister,
    device_update,
)
from hotswap.exceptions import ApplicationError
from hotswap.lib.admin import ReadOnlyTabularInline
from models_app.models import AIModel, ModelVersion

DEVICE_ADD_FIELDS = ("device_id", *UPDATABLE_FIELDS)
DEVICE_REPORTED_FIELDS = (
    "status", "last_seen", "model_slots", "cpu_percent", "memory_percent", "disk_percent", "registered_at",
    "registered_by", "enrollment_key",
)


def _copy_row(obj, row) -> None:
    """The admin goes on to log and redirect with `obj`: make it the row the service wrote."""
    for field in type(row)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(row, field.attname))
    obj._state.adding = False
    obj._state.db = row._state.db


class DeviceAddForm(forms.ModelForm):
    """Pre-registration in the console; the device and its first credential are made by device_preregister."""

    class Meta:
        model = Device
        fields = DEVICE_ADD_FIELDS

    def clean_device_id(self) -> str:
        device_id = self.cleaned_data["device_id"]
        if device_id.lower() in RESERVED_DEVICE_IDS:
            raise forms.ValidationError(f"'{device_id}' is reserved; choose another device id.")
        return device_id


class DeviceCredentialInline(ReadOnlyTabularInline):
    """A device's credentials by prefix; revoke them from the credential list, or issue a new one (action)."""

    model = DeviceCredential
    fields = ["prefix", "created_at", "created_by", "revoked_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class DesiredVersionForm(forms.Form):
    """The version selected devices should run of its model (their other models stay), with a reason."""

    version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(status__in=[ModelVersion.Status.PASSED, ModelVersion.Status.UPLOADED])
        .select_related("ai_model").order_by("ai_model__name", "-precedence"),
        help_text="Only this model's slot on each device changes. Passed or uploaded versions; deprecated and failed "
                  "ones are not offered.",
    )
    rollback = forms.BooleanField(
        required=False, label="This is a rollback",
        help_text="Devices go back to an older version. Required when the version is older than one a device runs "
                  "(the device refuses a downgrade that is not marked a rollback).")
    reason = forms.CharField(max_length=500, required=False, widget=forms.TextInput(attrs={"size": 60}))


class RemoveModelForm(forms.Form):
    """The model selected devices should unload and delete (their other models stay), with a reason."""

    model = forms.ModelChoiceField(queryset=AIModel.objects.order_by("name"), to_field_name="name",
                                   help_text="Devices without this model are left as they are.")
    reason = forms.CharField(max_length=500, required=False, widget=forms.TextInput(attrs={"size": 60}))


# The intermediate page of the "Set desired version…" and "Remove model…" actions (kept next to them).
SLOT_ACTION_PAGE = """{% extends "admin/base_site.html" %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{% url 'admin:index' %}">Home</a> &rsaquo;
<a href="{% url 'admin:devices_device_changelist' %}">Devices</a> &rsaquo; {{ title }}</div>{% endblock %}
{% block content %}
<p>{{ question }} {{ count }} device{{ count|pluralize }}:
{% for device in preview %}<code>{{ device.device_id }}</code>{% if not forloop.last %}, {% endif %}{% endfor %}
{% if count > preview|length %}and {{ count|add:preview_negative }} more{% endif %}.</p>
<form method="post">{% csrf_token %}
  {{ form.as_p }}
  {% for pk in selected %}<input type="hidden" name="{{ checkbox_name }}" value="{{ pk }}">{% endfor %}
  <input type="hidden" name="action" value="{{ action }}">
  <input type="hidden" name="select_across" value="{{ select_across }}">
  <input type="hidden" name="index" value="0">
  <input type="submit" name="apply" value="{{ title }}" class="default">
</form>
{% endblock %}
"""
PREVIEW = 20


# The device page's slots: one row per model, desired against running, with the device's last word on each.
SLOTS_TABLE = """<table class="model-slots"><thead><tr><th>model</th><th>desired</th><th>running</th><th>state</th>
<th>last install report</th><th>last metric window</th></tr></thead><tbody>{}</tbody></table>"""
SLOT_ROW = ('<tr data-model="{}"><td>{}</td><td>{}</td><td>{}</td><td class="slot-state">{}</td><td>{}</td>'
            "<td>{}</td></tr>")


def _desired(slot: ModelSlot) -> str:
    if slot.remove:
        return format_html("{}: remove <small>#{}</small>", slot.ai_model.name, slot.sequence)
    if slot.version_id is None:
        return "—"
    return format_html("{}{} <small>#{}</small>", slot.version.model_id, " (rollback)" if slot.rollback else "",
                       slot.sequence)


def _slot_row(slot: ModelSlot) -> tuple:
    state = ModelSlot.State(slot.state).label
    if slot.state == ModelSlot.State.REFUSED:
        state = format_html("{}: {}", state, slot.refused_reason or "no reason given")
    desired = _desired(slot)
    if slot.source and desired != "—":
        desired = format_html("{}<br><small>by {}</small>", desired, slot.source)
    install, window = slot.last_install, slot.last_window
    return (
        slot.ai_model.name, slot.ai_model.name, desired,
        slot.reported_version or "—", state,
        format_html("{} {} <small>#{} at {}</small>{}", install.status, install.model_version,
                    install.sequence if install.sequence is not None else "–",
                    f"{timezone.localtime(install.reported_at):%Y-%m-%d %H:%M:%S}",
                    format_html("<br><small>{}</small>", install.error) if install.error else "")
        if install else "—",
        format_html("{} {}–{}: {} inferences, {} errors, p99 {} ms{}", window.model_version,
                    f"{timezone.localtime(window.window_start):%H:%M}",
                    f"{timezone.localtime(window.window_end):%H:%M}", window.inference_count, window.error_count,
                    f"{window.latency_p99_ms:g}",
                    f", accuracy {window.accuracy:.1%}" if window.accuracy is not None else "")
        if window else "—",
    )


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    """The fleet: status, what each device runs and should run; decommission, credentials, desired version."""

    list_display = ["device_id", "name", "device_type", "region", "status", "running", "desired", "last_seen"]
    list_filter = ["status", "region", "device_type"]
    search_fields = ["device_id", "name", "tags"]
    show_full_result_count = False  # a second COUNT over 100,000 rows buys nothing
    inlines = [DeviceCredentialInline]
    actions = ["decommission_selected", "issue_credential", "set_desired_version", "remove_model"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Device]:
        return selectors.devices_with_slots(super().get_queryset(request))

    @admin.display(description="running")
    def running(self, obj: Device) -> str:
        running = [f"{slot.ai_model.name}-{slot.reported_version}" for slot in obj.slots.all() if slot.reported_version]
        return ", ".join(running) or "—"

    @admin.display(description="desired")
    def desired(self, obj: Device) -> str:
        return format_html_join(", ", "{}", ((_desired(slot),) for slot in obj.slots.all()
                                            if slot.remove or slot.version_id)) or "—"

    @admin.display(description="model slots")
    def model_slots(self, obj: Device) -> str:
        slots = selectors.device_slots(device=obj)
        if not slots:
            return "No models yet: the device reports what it runs at its next check-in."
        return format_html(SLOTS_TABLE, format_html_join("", SLOT_ROW, (_slot_row(slot) for slot in slots)))

    def get_form(self, request: HttpRequest, obj: Device | None = None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = DeviceAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Device | None = None):
        if obj is None:
            return DEVICE_ADD_FIELDS
        return ("device_id", *UPDATABLE_FIELDS, *DEVICE_REPORTED_FIELDS)

    def get_readonly_fields(self, request: HttpRequest, obj: Device | None = None):
        if obj is None:
            return ()
        return ("device_id", *DEVICE_REPORTED_FIELDS)

    def has_delete_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return False  # devices are decommissioned, never deleted: their history stays

    def save_model(self, request: HttpRequest, obj: Device, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            changed = {field: data[field] for field in form.changed_data if field in UPDATABLE_FIELDS}
            _copy_row(obj, device_update(device=Device.objects.get(pk=obj.pk), **changed))
            return
        device, _credential, key = device_preregister(
            device_id=data["device_id"], registered_by=request.user,
            **{field: data[field] for field in UPDATABLE_FIELDS},
        )
        _copy_row(obj, device)
        self.message_user(request, f"The credential of device “{device.device_id}” is shown only this once; copy "
                                   f"it onto the device now: {key}", messages.WARNING)

    @admin.action(description="Decommission selected devices (revokes their credentials)", permissions=["change"])
    def decommission_selected(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        count = 0
        for device in queryset:
            device_decommission(device=device, actor=request.user)
            count += 1
        self.message_user(request, f"Decommissioned {count} device(s); their credentials are revoked.",
                          messages.SUCCESS)

    @admin.action(description="Issue a new credential (one device; revokes its others)",
                  permissions=["issue_credential"])
    def issue_credential(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        devices = list(queryset[:2])
        if len(devices) != 1:
            self.message_user(request, "Select exactly one device to issue a credential to.", messages.ERROR)
            return
        try:
            _credential, key = device_credential_issue(device=devices[0], created_by=request.user)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"New credential of device “{devices[0].device_id}”, shown only this once (its "
                                   f"previous credentials are revoked): {key}", messages.WARNING)

    def has_issue_credential_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.add_devicecredential")

    def _slot_action(self, request: HttpRequest, queryset: QuerySet[Device], *, form_class, action: str,
                     title: str, question: str, apply):
        """An action on one model's slot of the selected devices: a page with the form, then `apply(data)`."""
        form = form_class(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                text, result = apply(form.cleaned_data)
            except ApplicationError as exc:
                listed = "; ".join(f"{d['field'].removeprefix('devices.')}: {d['message']}" for d in exc.details[:10])
                self.message_user(request, exc.message + (f" ({listed})" if listed else "") + ".", messages.ERROR)
                return None
            self._report_desired(request, text, result)
            return None
        select_across = request.POST.get("select_across") in ("1", "True", "true", "on")
        context = {
            **self.admin_site.each_context(request), "title": title, "question": question, "action": action,
            "opts": self.model._meta, "form": form, "count": queryset.count(), "preview": list(queryset[:PREVIEW]),
            "preview_negative": -PREVIEW, "select_across": "1" if select_across else "0",
            "selected": [] if select_across else request.POST.getlist(ACTION_CHECKBOX_NAME),
            "checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, engines["django"].from_string(SLOT_ACTION_PAGE), context)

    @admin.action(description="Set desired version…", permissions=["set_desired_version"])
    def set_desired_version(self, request: HttpRequest, queryset: QuerySet[Device]):
        def apply(data):
            result = desired_state_set(devices=queryset, version=data["version"], actor=request.user,
                                       rollback=data["rollback"], reason=data["reason"], source="manual")
            return f"Desired version set to {data['version'].model_id}", result

        return self._slot_action(request, queryset, form_class=DesiredVersionForm, action="set_desired_version",
                                 title="Set desired version", question="Set the version of one model to run on",
                                 apply=apply)

    @admin.action(description="Remove model…", permissions=["set_desired_version"])
    def remove_model(self, request: HttpRequest, queryset: QuerySet[Device]):
        def apply(data):
            result = desired_model_remove(devices=queryset, ai_model=data["model"], actor=request.user,
                                          reason=data["reason"], source="manual")
            return f"{data['model'].name} to be removed", result

        return self._slot_action(request, queryset, form_class=RemoveModelForm, action="remove_model",
                                 title="Remove model", question="Remove one model from", apply=apply)

    def _report_desired(self, request: HttpRequest, text: str, result) -> None:
        text += f" on {result.changed} device(s)"
        if result.unchanged:
            text += f"; {result.unchanged} already had it (or do not have the model)"
        self.message_user(request, text + ".", messages.SUCCESS)
        if result.skipped:
            reasons = "; ".join(item["reason"] for item in result.skipped[:10])
            more = f" and {len(result.skipped) - 10} more" if len(result.skipped) > 10 else ""
            self.message_user(request, f"Skipped {len(result.skipped)} device(s): {reasons}{more}.", messages.WARNING)

    def has_set_desired_version_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.set_desired_version")


@admin.register(DeviceCredential)
class DeviceCredentialAdmin(admin.ModelAdmin):
    """Device credentials by prefix (never their hashes); revoke them here."""

    list_display = ["prefix", "device", "created_at", "created_by", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["device", "created_by"]
    search_fields = ["prefix", "device__device_id"]
    fields = ["device", "prefix", "created_at", "created_by", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issued through the device's "Issue a new credential" action, which shows the key once

    def has_change_permission(self, request: HttpRequest, obj: DeviceCredential | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeviceCredential | None = None) -> bool:
        return False  # revoked, never deleted

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.delete_devicecredential")

    @admin.action(description="Revoke selected credentials", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[DeviceCredential]) -> None:
        revoked = 0
        for credential in queryset:
            was_active = credential.revoked_at is None
            device_credential_revoke(credential=credential, actor=request.user)
            revoked += was_active
        self.message_user(request, f"Revoked {revoked} credential(s); {queryset.count() - revoked} already revoked.",
                          messages.SUCCESS)


class EnrollmentKeyAddForm(forms.ModelForm):
    """What a person chooses; the key itself is made by enrollment_key_create."""

    class Meta:
        model = EnrollmentKey
        fields = ("name", "expires_at", "max_uses")

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at

    def clean_max_uses(self):
        max_uses = self.cleaned_data["max_uses"]
        if max_uses is not None and max_uses < 1:
            raise forms.ValidationError("A key must allow at least one use (leave it empty for no limit).")
        return max_uses


@admin.register(EnrollmentKey)
class EnrollmentKeyAdmin(admin.ModelAdmin):
    """Fleet enrollment keys: create (key shown once), view, revoke; never their hashes."""

    list_display = ["name", "prefix", "usage", "expires_at", "revoked_at", "created_at", "created_by"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["created_by"]
    search_fields = ["name", "prefix"]
    actions = ["revoke_selected"]
    add_fields = ("name", "expires_at", "max_uses")
    detail_fields = ("name", "prefix", "created_at", "created_by", "expires_at", "max_uses", "uses", "revoked_at")

    @admin.display(description="uses")
    def usage(self, obj: EnrollmentKey) -> str:
        return f"{obj.uses} / {obj.max_uses if obj.max_uses is not None else '∞'}"

    def get_form(self, request: HttpRequest, obj: EnrollmentKey | None = None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = EnrollmentKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: EnrollmentKey | None = None):
        return self.add_fields if obj is None else self.detail_fields

    def get_readonly_fields(self, request: HttpRequest, obj: EnrollmentKey | None = None):
        return () if obj is None else self.detail_fields

    def has_change_permission(self, request: HttpRequest, obj: EnrollmentKey | None = None) -> bool:
        # An existing key's page is view-only; revocation is the only change, via the action.
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: EnrollmentKey | None = None) -> bool:
        return False  # revoked, never deleted: devices keep pointing at the key they enrolled with

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.delete_enrollmentkey")

    def save_model(self, request: HttpRequest, obj: EnrollmentKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            return
        data = form.cleaned_data
        key, raw = enrollment_key_create(name=data["name"], created_by=request.user,
                                         expires_at=data["expires_at"], max_uses=data["max_uses"])
        _copy_row(obj, key)
        self.message_user(request, f"Enrollment key “{key.name}” is shown only this once; copy it now: {raw}",
                          messages.WARNING)

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[EnrollmentKey]) -> None:
        revoked = 0
        for key in queryset:
            was_active = key.revoked_at is None
            enrollment_key_revoke(key=key, actor=request.user)
            revoked += was_active
        self.message_user(request, f"Revoked {revoked} key(s); {queryset.count() - revoked} already revoked.",
                          messages.SUCCESS)


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Reports devices sent: looked at, never edited."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(InstallReport)
class InstallReportAdmin(_ReadOnlyAdmin):
    """Install attempts devices reported."""

    list_display = ["device", "model_name", "model_version", "status", "sequence", "duration_ms", "reported_at"]
    list_filter = ["status", "version"]
    list_select_related = ["device"]
    search_fields = ["device__device_id", "model_name"]
    date_hierarchy = "reported_at"


@admin.register(MetricWindow)
class MetricWindowAdmin(_ReadOnlyAdmin):
    """Inference metric windows devices reported."""

    list_display = ["device", "model_name", "model_version", "window_start", "window_end", "inference_count",
                    "error_count", "latency_p99_ms", "accuracy"]
    list_filter = ["version"]
    list_select_related = ["device"]
    search_fields = ["device__device_id"]
    date_hierarchy = "window_end"
