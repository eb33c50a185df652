"""Reads from the device registry: the filtered fleet list, one device, its metrics, credentials, keys."""

from __future__ import annotations

from datetime import datetime, timedelta

import django_filters
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from devices.credentials import DEVICE_KIND, secret_matches, split_secret
from devices.models import Device, DeviceCredential, EnrollmentKey, InstallReport, MetricWindow, ModelSlot
from hotswap.exceptions import NotFoundError
from models_app.models import AIModel, ModelVersion

RECENT_INSTALLS = 20
MAX_METRIC_WINDOWS = 500
DEFAULT_METRICS_SPAN = timedelta(hours=1)

# ordering= value → columns; each one is served by an index (device_id is the unique one, the
# others are db_index=True), and id stands for registered_at (same order, no extra index).
DEVICE_ORDERINGS = {
    "device_id": ("device_id",),
    "region": ("region", "device_id"),
    "device_type": ("device_type", "device_id"),
    "memory_mb": ("memory_mb", "device_id"),
    "last_seen": ("last_seen", "device_id"),
    "registered_at": ("id",),
}


class DeviceFilter(django_filters.FilterSet):
    """Filters for the fleet list; every one is answered from an index."""

    region = django_filters.CharFilter()
    device_type = django_filters.CharFilter()
    tag = django_filters.CharFilter(method="filter_tag", help_text="Comma-separated: devices with all of them.")
    status = django_filters.MultipleChoiceFilter(choices=Device.Status.choices)
    online = django_filters.ChoiceFilter(method="filter_online", choices=[("true", "true"), ("false", "false")],
                                         help_text="true: status active; false: any other status.")
    min_memory_mb = django_filters.NumberFilter(field_name="memory_mb", lookup_expr="gte", min_value=0)
    model = django_filters.CharFilter(method="filter_model",
                                      help_text="Name of a model the device has a slot for (runs it or should).")
    version = django_filters.CharFilter(method="filter_version",
                                        help_text="A version it runs: a model_id (resnet-1.2.0) or a bare version.")
    desired_version = django_filters.CharFilter(method="filter_desired_version",
                                                help_text="A version it should run: a model_id or a bare version.")
    search = django_filters.CharFilter(method="filter_search",
                                       help_text="Case-insensitive prefix of the device_id or the name.")

    class Meta:
        model = Device
        fields = ["region", "device_type", "tag", "status", "online", "min_memory_mb", "model", "version",
                  "desired_version", "search"]

    def filter_tag(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        tags = [tag.strip() for tag in value.split(",") if tag.strip()]
        return queryset.filter(tags__contains=tags) if tags else queryset  # GIN index on tags

    def filter_online(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        if value == "true":
            return queryset.filter(status=Device.Status.ACTIVE)
        return queryset.exclude(status=Device.Status.ACTIVE)

    # Model and version filters go through the slots: the names are resolved to primary keys first, so each is
    # one index scan of the slots (slot_model_running_idx, slot_running_idx, slot_desired_idx) by key.
    def filter_model(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        ai_model = AIModel.objects.filter(name=value).values_list("pk", flat=True).first()
        return queryset.filter(pk__in=ModelSlot.objects.filter(ai_model_id=ai_model).values("device_id"))

    def filter_version(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        slots = ModelSlot.objects.filter(running_version_id__in=self._versions(value))
        return queryset.filter(pk__in=slots.values("device_id"))

    def filter_desired_version(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        slots = ModelSlot.objects.filter(version_id__in=self._versions(value))
        return queryset.filter(pk__in=slots.values("device_id"))

    def _versions(self, value: str) -> list[int]:
        """The registry versions a value names: a model_id, or a bare version of the `model` filter's model (or any)."""
        versions = ModelVersion.objects.filter(Q(model_id=value) | Q(version=value))
        if model := self.data.get("model"):
            versions = versions.filter(ai_model__name=model)
        return list(versions.values_list("pk", flat=True)[:1000])

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        # Prefix matches use the UPPER(...) text_pattern_ops indexes; a substring match could not.
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(device_id__istartswith=value) | Q(name__istartswith=value))


def slots_with_models(slots: QuerySet[ModelSlot]) -> QuerySet[ModelSlot]:
    """Slots by model name, with their model and versions in the same query."""
    return slots.select_related("ai_model", "version", "running_version").order_by("ai_model__name")


def devices_with_slots(queryset: QuerySet[Device]) -> QuerySet[Device]:
    """The devices with their slots: one more query per page, whatever the number of slots."""
    return queryset.prefetch_related(Prefetch("slots", queryset=slots_with_models(ModelSlot.objects.all())))


def device_list(*, filters: dict | None = None, ordering: str = "") -> QuerySet[Device]:
    """The fleet, filtered and ordered; every slot (what each model runs and should run) in one more query."""
    filterset = DeviceFilter(filters or {}, queryset=devices_with_slots(Device.objects.all()))
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    return _order(filterset.qs, ordering)


def _order(queryset: QuerySet[Device], ordering: str) -> QuerySet[Device]:
    if not ordering:
        return queryset.order_by("device_id")
    key = ordering.removeprefix("-")
    if key not in DEVICE_ORDERINGS:
        raise ValidationError({"ordering": [f"Order by one of {', '.join(DEVICE_ORDERINGS)} (prefix - to reverse)."]})
    sign = "-" if ordering.startswith("-") else ""
    return queryset.order_by(*(f"{sign}{column}" for column in DEVICE_ORDERINGS[key]))


def device_get(*, device_id: str) -> Device:
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        raise NotFoundError(f"Device '{device_id}' does not exist.", code="DEVICE_NOT_FOUND")
    return device


def device_slots(*, device: Device) -> list[ModelSlot]:
    """The device's slots by model name, each with its last install report and last metric window (or None).

    Two more queries whatever the number of slots: the newest report and window per model name.
    """
    slots = list(slots_with_models(ModelSlot.objects.filter(device=device)))
    names = [slot.ai_model.name for slot in slots]
    installs = _newest_per_model(InstallReport.objects.filter(device=device).select_related("version"), names,
                                 "-reported_at")
    windows = _newest_per_model(MetricWindow.objects.filter(device=device), names, "-window_end")
    for slot in slots:
        slot.last_install = installs.get(slot.ai_model.name)
        slot.last_window = windows.get(slot.ai_model.name)
    return slots


def device_credentials(*, device: Device) -> QuerySet[DeviceCredential]:
    return DeviceCredential.objects.filter(device=device).order_by("-created_at", "-id")


def device_credential_get(*, device: Device, credential_id: int) -> DeviceCredential:
    credential = DeviceCredential.objects.filter(device=device, pk=credential_id).first()
    if credential is None:
        raise NotFoundError(f"Device '{device.device_id}' has no credential with id {credential_id}.",
                            code="CREDENTIAL_NOT_FOUND")
    return credential


def device_for_credential(*, raw_credential: str) -> Device | None:
    """The device a raw `hsd_…` credential belongs to, if it is well-formed, known and not revoked."""
    split = split_secret(raw_credential or "", DEVICE_KIND)
    if split is None:
        return None
    prefix, secret = split
    credential = (DeviceCredential.objects.select_related("device")
                  .filter(prefix=prefix, revoked_at__isnull=True).first())
    if credential is None or not secret_matches(secret, credential.key_hash):
        return None
    return credential.device


def _newest_per_model(queryset: QuerySet, names: list[str], newest_first: str) -> dict:
    # A UNION of one LIMIT 1 per model: each branch stops at its first row of the (device, time) index,
    # where DISTINCT ON would read every report the device ever sent.
    branches = [queryset.filter(model_name=name).order_by(newest_first, "-id")[:1] for name in names]
    if not branches:
        return {}
    rows = branches[0].union(*branches[1:], all=True) if len(branches) > 1 else branches[0]
    return {row.model_name: row for row in rows}


def device_metrics(*, device: Device, since: datetime | None = None, now: datetime | None = None) -> dict:
    """Health, every slot (what each model runs and should run), its last install reports and metric windows."""
    since = since or (now or timezone.now()) - DEFAULT_METRICS_SPAN
    installs = InstallReport.objects.filter(device=device).select_related("version").order_by("-reported_at")
    windows = MetricWindow.objects.filter(device=device, window_end__gte=since).order_by("-window_end")
    return {
        "device": device,
        "slots": list(slots_with_models(device.slots.all())),
        "installs": list(installs[:RECENT_INSTALLS]),  # install_device_time_idx
        "metrics_since": since,
        "metrics": list(windows[:MAX_METRIC_WINDOWS]),  # metric_device_time_idx
    }


def enrollment_key_list() -> QuerySet[EnrollmentKey]:
    return EnrollmentKey.objects.select_related("created_by").order_by("-created_at", "-id")


def enrollment_key_get(*, key_id: int) -> EnrollmentKey:
    key = EnrollmentKey.objects.select_related("created_by").filter(pk=key_id).first()
    if key is None:
        raise NotFoundError(f"No enrollment key has id {key_id}.", code="ENROLLMENT_KEY_NOT_FOUND")
    return key
