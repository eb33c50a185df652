"""Device registry API for people and CI: the fleet list, devices, credentials, enrollment keys; and enrollment."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import manifests, selectors
from devices.models import DEVICE_ID_PATTERN, Device, ModelSlot
from devices.selectors import DEVICE_ORDERINGS
from devices.services.credentials import device_credential_issue, device_credential_revoke
from devices.services.enrollment import device_enroll, enrollment_key_create, enrollment_key_revoke
from devices.services.registry import device_decommission, device_preregister, device_update
from hotswap.accounts.schema import FORBIDDEN, UNAUTHENTICATED, error_response
from hotswap.accounts.throttles import EnrollThrottle, MonitorThrottle
from hotswap.exceptions import ApplicationError
from hotswap.lib.pagination import paginated_response
from hotswap.lib.query import query_filters
from hotswap.lib.schema import ordering_parameter
from hotswap_device.protocol import ACTION_INSTALL, ACTION_REMOVE, CHECKIN_PATH, PROTOCOL_VERSION

MAX_TAGS = 32

DEVICE_NOT_FOUND = error_response("DEVICE_NOT_FOUND: no device has this device_id.")
VALIDATION_ERROR = error_response("VALIDATION_ERROR: every problem is listed in `details` (field, message).")
RATE_LIMITED = error_response("RATE_LIMITED: too many requests; see the Retry-After header.")


def _paginated(name: str, item: serializers.Serializer):
    return inline_serializer(name, fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item,
    })


PAGE_PARAMETERS = [
    OpenApiParameter("page", OpenApiTypes.INT, description="Page number, from 1."),
    OpenApiParameter("page_size", OpenApiTypes.INT, description="Items per page (default 50, max 500)."),
]


# The JSON type each kind of field takes. DRF also takes 0 for false or a number for a string; the schema does not.
_JSON_TYPES: tuple[tuple[type[serializers.Field], type | tuple[type, ...], str], ...] = (
    (serializers.BooleanField, bool, "true or false"),
    (serializers.IntegerField, int, "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.CharField, str, "a string"),
    (serializers.ChoiceField, str, "a string"),
    (serializers.DateTimeField, str, "a string"),
    (serializers.ListField, list, "a list"),
    (serializers.DictField, dict, "an object"),
    (serializers.Serializer, dict, "an object"),
)


def _json_type_error(field: serializers.Field, value) -> str | None:
    if value is None:
        return None
    for kind, types, name in _JSON_TYPES:
        if isinstance(field, kind):
            if (isinstance(value, bool) and types is not bool) or not isinstance(value, types):
                return f"Expected {name}."
            if isinstance(field, serializers.ListField):
                return next(filter(None, (_json_type_error(field.child, item) for item in value)), None)
            return None
    return None


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know and values of another JSON type, so a typo is an error, not ignored."""

    def to_internal_value(self, data):
        problems = {}
        if isinstance(data, Mapping):
            problems = {name: ["Unknown field."] for name in data if name not in self.fields}
            if not hasattr(data, "getlist"):  # JSON, not a query string or a form, whose values are all strings
                problems |= {name: [error] for name, field in self.fields.items() if name in data
                             and (error := _json_type_error(field, data[name]))}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if problems and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **problems}) from exc
            raise
        if problems:
            raise serializers.ValidationError(problems)
        return value


class CapabilitiesInputSerializer(StrictSerializer):
    """What the device has: CPU cores, memory, storage, GPU model (null or empty when none)."""

    cpu_cores = serializers.IntegerField(min_value=1, max_value=32767, allow_null=True, required=False)
    memory_mb = serializers.IntegerField(min_value=1, max_value=2_147_483_647, allow_null=True, required=False)
    storage_gb = serializers.IntegerField(min_value=1, max_value=2_147_483_647, allow_null=True, required=False)
    gpu = serializers.CharField(max_length=64, allow_null=True, allow_blank=True, required=False)


def _tags_field(**kwargs) -> serializers.ListField:
    # A tag is trimmed, so one of only whitespace is blank and refused: the pattern says so in the OpenAPI schema.
    tag = serializers.RegexField(r"\S", max_length=64)
    return serializers.ListField(child=tag, max_length=MAX_TAGS, **kwargs)


class DeviceFieldsInputSerializer(StrictSerializer):
    """The descriptive fields of a device, shared by pre-registration and enrollment."""

    device_id = serializers.RegexField(DEVICE_ID_PATTERN, max_length=64, error_messages={
        "invalid": "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit."})
    name = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    device_type = serializers.CharField(max_length=64, required=False, allow_blank=True, default="",
                                        help_text="e.g. edge-camera")
    region = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    tags = _tags_field(required=False, default=list)
    capabilities = CapabilitiesInputSerializer(required=False, default=dict)


class CapabilitiesOutputSerializer(serializers.Serializer):
    """The device's hardware."""

    cpu_cores = serializers.IntegerField(allow_null=True)
    memory_mb = serializers.IntegerField(allow_null=True)
    storage_gb = serializers.IntegerField(allow_null=True)
    gpu = serializers.SerializerMethodField()

    def get_gpu(self, obj: Device) -> str | None:
        return obj.gpu or None


class HealthOutputSerializer(serializers.Serializer):
    """Last reported resource use (percent)."""

    cpu_percent = serializers.FloatField(allow_null=True)
    memory_percent = serializers.FloatField(allow_null=True)
    disk_percent = serializers.FloatField(allow_null=True)


class SlotDesiredOutputSerializer(serializers.Serializer):
    """What the slot should do: install a version (action install) or unload the model (action remove)."""

    action = serializers.SerializerMethodField(help_text="install, remove, or null: nothing desired (keep it)")
    version = serializers.CharField(source="version.model_id", allow_null=True, default=None,
                                    help_text="model_id of the desired version (action install)")
    rollback = serializers.BooleanField()
    set_at = serializers.DateTimeField(allow_null=True)
    source = serializers.CharField(help_text="manual, or the distribution that set it")
    reason = serializers.CharField()

    def get_action(self, obj: ModelSlot) -> str | None:
        return ACTION_REMOVE if obj.remove else ACTION_INSTALL if obj.version_id else None


class SlotRunningOutputSerializer(serializers.Serializer):
    """What the device last said it runs of this model; model_id when that is a registry version."""

    version = serializers.CharField(source="reported_version")
    model_id = serializers.CharField(source="running_version.model_id", allow_null=True, default=None)
    sha256 = serializers.CharField(source="reported_sha256")
    reported_at = serializers.DateTimeField(
        allow_null=True, help_text="Since when the device reports this (the device's last_seen: when it last "
                                   "reported at all).")


class SlotOutputSerializer(serializers.Serializer):
    """One model on the device: its desired state, what it runs, and where that stands."""

    model = serializers.CharField(source="ai_model.name")
    state = serializers.ChoiceField(choices=ModelSlot.State.choices, help_text=(
        "in_sync (runs the desired version), installing (not reported running yet), refused (the device refused "
        "or failed the current desired state: see refused_reason), removing, removed, unmanaged (nothing desired)"))
    sequence = serializers.IntegerField(help_text="bumped by every change of this slot's desired state")
    desired = SlotDesiredOutputSerializer(source="*")
    running = serializers.SerializerMethodField()
    refused_reason = serializers.SerializerMethodField(help_text="the device's error when state is refused")

    @extend_schema_field(SlotRunningOutputSerializer(allow_null=True))
    def get_running(self, obj: ModelSlot):
        return SlotRunningOutputSerializer(obj).data if obj.reported_version else None

    def get_refused_reason(self, obj: ModelSlot) -> str | None:
        return obj.refused_reason if obj.state == ModelSlot.State.REFUSED else None


class CredentialOutputSerializer(serializers.Serializer):
    """A device credential, by its public prefix (the secret is never shown again)."""

    id = serializers.IntegerField()
    prefix = serializers.CharField(help_text="The public part, `hsd_<prefix>_…`.")
    created_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)


class IssuedCredentialOutputSerializer(CredentialOutputSerializer):
    """A credential just issued, with its raw key: shown this once."""

    key = serializers.CharField(help_text="`hsd_<prefix>_<secret>`: shown once; the device sends it as "
                                          "`Authorization: Device <key>`.")


class InstallReportOutputSerializer(serializers.Serializer):
    """One install attempt the device reported."""

    model = serializers.CharField(source="model_name")
    version = serializers.CharField(source="model_version")
    model_id = serializers.CharField(source="version.model_id", allow_null=True, default=None)
    status = serializers.CharField()
    error = serializers.CharField()
    sequence = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    reported_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()


class LatencyOutputSerializer(serializers.Serializer):
    """Latency percentiles over the window, in milliseconds."""

    p50 = serializers.FloatField(source="latency_p50_ms")
    p95 = serializers.FloatField(source="latency_p95_ms")
    p99 = serializers.FloatField(source="latency_p99_ms")


class MetricWindowOutputSerializer(serializers.Serializer):
    """Inference metrics the device measured over one window."""

    model = serializers.CharField(source="model_name")
    version = serializers.CharField(source="model_version")
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    inference_count = serializers.IntegerField()
    error_count = serializers.IntegerField()
    latency_ms = LatencyOutputSerializer(source="*")
    latency_histogram = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    accuracy = serializers.FloatField(allow_null=True)
    labelled_count = serializers.IntegerField(allow_null=True)


class SlotDetailOutputSerializer(SlotOutputSerializer):
    """A slot with the device's last install report and last metric window about its model."""

    last_install = InstallReportOutputSerializer(allow_null=True)
    last_metric_window = MetricWindowOutputSerializer(source="last_window", allow_null=True)


class DeviceOutputSerializer(serializers.Serializer):
    """A device as the registry API shows it."""

    device_id = serializers.CharField()
    name = serializers.CharField()
    device_type = serializers.CharField()
    region = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    capabilities = CapabilitiesOutputSerializer(source="*")
    status = serializers.CharField(help_text="active, offline or decommissioned")
    online = serializers.SerializerMethodField()
    health = HealthOutputSerializer(source="*")
    slots = SlotOutputSerializer(many=True, help_text="One per model the device runs or should run, by name.")
    registered_at = serializers.DateTimeField()
    last_seen = serializers.DateTimeField(allow_null=True)

    def get_online(self, obj: Device) -> bool:
        return obj.status == Device.Status.ACTIVE


class DeviceDetailOutputSerializer(DeviceOutputSerializer):
    """A device with its credentials (prefixes only), and each slot's last install report and metric window."""

    slots = serializers.SerializerMethodField()
    credentials = serializers.SerializerMethodField()

    @extend_schema_field(SlotDetailOutputSerializer(many=True))
    def get_slots(self, obj: Device):
        return SlotDetailOutputSerializer(selectors.device_slots(device=obj), many=True).data

    @extend_schema_field(CredentialOutputSerializer(many=True))
    def get_credentials(self, obj: Device):
        return CredentialOutputSerializer(selectors.device_credentials(device=obj), many=True).data


def _capability_fields(capabilities: dict) -> dict:
    return {key: capabilities[key] for key in ("cpu_cores", "memory_mb", "storage_gb", "gpu") if key in capabilities}


class DeviceListApi(APIView):
    """Lists the fleet with filters, ordering and pagination."""

    required_permission = "devices.view_device"
    throttle_classes = [MonitorThrottle]

    @extend_schema(
        tags=["devices"],
        operation_id="v1_devices_list",
        summary="List devices",
        description="Roles: all (Viewer and up; `devices.view_device`). Filters: `region`, `device_type`, `tag` "
                    "(comma-separated: all of them), `status` (repeatable), `online` (true: status active), "
                    "`min_memory_mb`, `model` (a model the device has a slot for), `version` (a version it runs: "
                    "model_id such as `resnet-1.2.0`, or a bare version, of `model` if given), `desired_version` "
                    "(a version it should run, likewise), `search` (case-insensitive prefix of device_id "
                    "or name). Ordering: `ordering=device_id|region|device_type|memory_mb|last_seen|registered_at`, "
                    "prefixed by - to reverse. Every filter and ordering is served by an index.",
        parameters=[
            *(OpenApiParameter(p, str) for p in ("region", "device_type", "tag", "model", "version", "desired_version",
                                                 "search")),
            ordering_parameter(DEVICE_ORDERINGS),
            OpenApiParameter("status", str, many=True, enum=Device.Status.values),
            OpenApiParameter("online", bool),
            # django-filter's NumberFilter refuses values above 1e50 (no huge decimals): the schema says so.
            OpenApiParameter("min_memory_mb", {"type": "number", "minimum": 0, "maximum": 1e50}),
            *PAGE_PARAMETERS,
        ],
        responses={200: _paginated("PaginatedDeviceList", DeviceOutputSerializer(many=True)),
                   400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN, 429: RATE_LIMITED},
    )
    def get(self, request: Request) -> Response:
        queryset = selectors.device_list(filters=query_filters(request.query_params),
                                         ordering=request.query_params.get("ordering", ""))
        return paginated_response(request=request, view=self, queryset=queryset,
                                  serializer_class=DeviceOutputSerializer)


class DeviceCreateApi(APIView):
    """Pre-registers a device and issues its first credential (shown once)."""

    required_permission = "devices.add_device"

    @extend_schema_serializer(component_name="DeviceCreate")
    class InputSerializer(DeviceFieldsInputSerializer):
        """A device to pre-register."""

    @extend_schema_serializer(component_name="DeviceCreated")
    class OutputSerializer(DeviceOutputSerializer):
        """The new device and its credential."""

        credential = IssuedCredentialOutputSerializer()

    @extend_schema(
        tags=["devices"],
        summary="Pre-register a device",
        description="Roles: Admin, Operator (`devices.add_device`). Registers the device (status active, desired "
                    "state empty) and issues its credential, returned once as `credential.key`; only a hash is "
                    "stored. Errors: 400 VALIDATION_ERROR (including reserved ids such as `enroll`), "
                    "409 DEVICE_EXISTS.",
        request=InputSerializer,
        responses={201: OutputSerializer, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   409: error_response("DEVICE_EXISTS: a device with this device_id is registered.")},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        device, credential, key = device_preregister(
            device_id=data["device_id"], name=data["name"], device_type=data["device_type"], region=data["region"],
            tags=data["tags"], registered_by=request.user, **_capability_fields(data["capabilities"]),
        )
        credential.key = key
        device.credential = credential
        return Response(self.OutputSerializer(device).data, status=status.HTTP_201_CREATED)


class DeviceGetApi(APIView):
    """One device with its state and credentials."""

    required_permission = "devices.view_device"
    throttle_classes = [MonitorThrottle]

    @extend_schema(tags=["devices"], summary="Get a device",
                   description="Roles: all (`devices.view_device`). Every model slot (desired and running "
                               "version, state, refusal, its last install report and metric window); "
                               "credentials by prefix only.",
                   responses={200: DeviceDetailOutputSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                              404: DEVICE_NOT_FOUND, 429: RATE_LIMITED})
    def get(self, request: Request, device_id: str) -> Response:
        return Response(DeviceDetailOutputSerializer(selectors.device_get(device_id=device_id)).data)


class DeviceUpdateApi(APIView):
    """Changes a device's name, type, region, tags or capabilities."""

    required_permission = "devices.change_device"

    @extend_schema_serializer(component_name="DeviceUpdate")
    class InputSerializer(StrictSerializer):
        """The fields to change; absent fields keep their value."""

        device_id = serializers.CharField(required=False, help_text="Optional; must equal the URL's (no renames).")
        name = serializers.CharField(max_length=128, required=False, allow_blank=True)
        device_type = serializers.CharField(max_length=64, required=False, allow_blank=True)
        region = serializers.CharField(max_length=64, required=False, allow_blank=True)
        tags = _tags_field(required=False)
        capabilities = CapabilitiesInputSerializer(required=False)

    @extend_schema(
        tags=["devices"],
        summary="Update a device",
        description="Roles: Admin, Operator (`devices.change_device`). Replaces the fields given (inside "
                    "`capabilities` too) and keeps the others; what the device reports (health, running model) "
                    "cannot be set here. A device cannot be renamed: `device_id`, if sent, must match the URL. "
                    "Errors: 400 VALIDATION_ERROR with every problem in `details`, 404 DEVICE_NOT_FOUND.",
        request=InputSerializer,
        responses={200: DeviceDetailOutputSerializer, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED,
                   403: FORBIDDEN, 404: DEVICE_NOT_FOUND},
    )
    def put(self, request: Request, device_id: str) -> Response:
        device = selectors.device_get(device_id=device_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if data.pop("device_id", device_id) != device_id:
            raise ApplicationError("A device cannot be renamed; device_id must match the URL.",
                                   code="VALIDATION_ERROR",
                                   details=[{"field": "device_id", "message": "Does not match the URL."}])
        capabilities = data.pop("capabilities", {})
        fields = {**data, **_capability_fields(capabilities)}
        device = device_update(device=device, **fields)
        return Response(DeviceDetailOutputSerializer(device).data)


class DeviceDecommissionApi(APIView):
    """Decommissions a device: it is kept with its history, and every credential is revoked."""

    required_permission = "devices.change_device"

    @extend_schema(
        tags=["devices"],
        summary="Decommission a device",
        description="Roles: Admin, Operator (`devices.change_device`). Sets the status to decommissioned and "
                    "revokes every credential, so the device is locked out at its next call; its record, install "
                    "reports and metrics stay. Decommissioning again changes nothing (204).",
        responses={204: None, 401: UNAUTHENTICATED, 403: FORBIDDEN, 404: DEVICE_NOT_FOUND},
    )
    def delete(self, request: Request, device_id: str) -> Response:
        device_decommission(device=selectors.device_get(device_id=device_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeviceHealthOutputSerializer(HealthOutputSerializer):
    """Resource use, status and when the device was last heard from."""

    status = serializers.CharField()
    online = serializers.SerializerMethodField()
    last_seen = serializers.DateTimeField(allow_null=True)

    def get_online(self, obj: Device) -> bool:
        return obj.status == Device.Status.ACTIVE


class DeviceMetricsApi(APIView):
    """A device's health, what it runs and should run, its install reports and recent inference metrics."""

    required_permission = "devices.view_device"
    throttle_classes = [MonitorThrottle]

    class FilterSerializer(serializers.Serializer):
        since = serializers.DateTimeField(required=False, help_text="Metric windows ending at or after this "
                                                                    "time (ISO 8601); default: the last hour.")

    @extend_schema_serializer(component_name="DeviceMetrics")
    class OutputSerializer(serializers.Serializer):
        """The metrics view of one device."""

        device_id = serializers.CharField(source="device.device_id")
        health = DeviceHealthOutputSerializer(source="device")
        slots = SlotOutputSerializer(many=True, help_text="One per model the device runs or should run.")
        installs = InstallReportOutputSerializer(many=True, help_text="The last 20, newest first.")
        metrics_since = serializers.DateTimeField()
        metrics = MetricWindowOutputSerializer(many=True, help_text="Newest first, at most 500.")

    @extend_schema(
        tags=["devices"],
        summary="Get a device's health and metrics",
        description="Roles: all (`devices.view_device`). Health (CPU/memory/disk %, status, last_seen), the "
                    "model slots (desired and running version, state), the last 20 install reports and the metric "
                    "windows that ended since `since` (default one hour ago; at most 500, newest first).",
        parameters=[FilterSerializer],
        responses={200: OutputSerializer, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   404: DEVICE_NOT_FOUND, 429: RATE_LIMITED},
    )
    def get(self, request: Request, device_id: str) -> Response:
        filters = self.FilterSerializer(data=query_filters(request.query_params).dict())
        filters.is_valid(raise_exception=True)
        device = selectors.device_get(device_id=device_id)
        data = selectors.device_metrics(device=device, since=filters.validated_data.get("since"))
        return Response(self.OutputSerializer(data).data)


class DeviceCredentialIssueApi(APIView):
    """Issues a device a new credential, shown once; by default the old ones stop working."""

    required_permission = "devices.add_devicecredential"

    @extend_schema_serializer(component_name="DeviceCredentialIssue")
    class InputSerializer(StrictSerializer):
        revoke_existing = serializers.BooleanField(required=False, default=True,
                                                   help_text="Revoke the device's other credentials (default).")

    @extend_schema(
        tags=["devices"],
        summary="Issue a device credential",
        description="Roles: Admin, Operator (`devices.add_devicecredential`). Returns the raw key once (`key`); "
                    "only a hash is stored. With `revoke_existing` (default true) every other credential of the "
                    "device is revoked, locking out whoever holds one at their next call. "
                    "Errors: 404 DEVICE_NOT_FOUND, 409 DEVICE_DECOMMISSIONED.",
        request=InputSerializer,
        responses={201: IssuedCredentialOutputSerializer, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED,
                   403: FORBIDDEN, 404: DEVICE_NOT_FOUND,
                   409: error_response("DEVICE_DECOMMISSIONED: a decommissioned device gets no credential.")},
    )
    def post(self, request: Request, device_id: str) -> Response:
        device = selectors.device_get(device_id=device_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        credential, key = device_credential_issue(device=device, created_by=request.user,
                                                  revoke_existing=serializer.validated_data["revoke_existing"])
        credential.key = key
        return Response(IssuedCredentialOutputSerializer(credential).data, status=status.HTTP_201_CREATED)


class DeviceCredentialRevokeApi(APIView):
    """Revokes one device credential; revoking it again is harmless."""

    required_permission = "devices.delete_devicecredential"

    @extend_schema(
        tags=["devices"],
        summary="Revoke a device credential",
        description="Roles: Admin, Operator (`devices.delete_devicecredential`). The credential stops working at "
                    "the device's next call and stays listed, marked revoked. Revoking again changes nothing.",
        responses={204: None, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   404: error_response("DEVICE_NOT_FOUND or CREDENTIAL_NOT_FOUND (not one of this device's).")},
    )
    def delete(self, request: Request, device_id: str, credential_id: int) -> Response:
        device = selectors.device_get(device_id=device_id)
        credential = selectors.device_credential_get(device=device, credential_id=credential_id)
        device_credential_revoke(credential=credential, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EnrollmentKeyOutputSerializer(serializers.Serializer):
    """A fleet enrollment key, by its public prefix."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The public part, `hse_<prefix>_…`.")
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    expires_at = serializers.DateTimeField(allow_null=True)
    max_uses = serializers.IntegerField(allow_null=True)
    uses = serializers.IntegerField()
    revoked_at = serializers.DateTimeField(allow_null=True)


class EnrollmentKeyListApi(APIView):
    """Lists fleet enrollment keys, newest first."""

    required_permission = "devices.view_enrollmentkey"

    @extend_schema(
        tags=["enrollment"],
        operation_id="v1_enrollment_keys_list",
        summary="List enrollment keys",
        description="Roles: Admin (`devices.view_enrollmentkey`). Keys are shown by prefix only.",
        parameters=PAGE_PARAMETERS,
        responses={200: _paginated("PaginatedEnrollmentKeyList", EnrollmentKeyOutputSerializer(many=True)),
                   401: UNAUTHENTICATED, 403: FORBIDDEN},
    )
    def get(self, request: Request) -> Response:
        return paginated_response(request=request, view=self, queryset=selectors.enrollment_key_list(),
                                  serializer_class=EnrollmentKeyOutputSerializer)


class EnrollmentKeyCreateApi(APIView):
    """Creates a fleet enrollment key and returns it, the only time it is ever shown."""

    required_permission = "devices.add_enrollmentkey"

    @extend_schema_serializer(component_name="EnrollmentKeyCreate")
    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100, help_text="What the key is for, e.g. `eu-west cameras`.")
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None,
                                               help_text="When the key stops working; never when absent.")
        max_uses = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                            max_value=2_147_483_647,
                                            help_text="How many devices may enroll with it; no limit when absent.")

    @extend_schema_serializer(component_name="EnrollmentKeyCreated")
    class OutputSerializer(EnrollmentKeyOutputSerializer):
        """The new key with its raw value."""

        key = serializers.CharField(help_text="`hse_<prefix>_<secret>`: shown once, store it now.")

    @extend_schema(
        tags=["enrollment"],
        summary="Create an enrollment key",
        description="Roles: Admin (`devices.add_enrollmentkey`). Devices enroll themselves with the key "
                    "(`POST /api/v1/devices/enroll`). The raw key is returned once; only a hash is stored.",
        request=InputSerializer,
        responses={201: OutputSerializer, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = enrollment_key_create(created_by=request.user, **serializer.validated_data)
        key.key = raw
        return Response(self.OutputSerializer(key).data, status=status.HTTP_201_CREATED)


class EnrollmentKeyRevokeApi(APIView):
    """Revokes an enrollment key; devices already enrolled with it keep working."""

    required_permission = "devices.delete_enrollmentkey"

    @extend_schema(
        tags=["enrollment"],
        summary="Revoke an enrollment key",
        description="Roles: Admin (`devices.delete_enrollmentkey`). No device can enroll with it any more; "
                    "devices that already did keep their credentials. Revoking again changes nothing.",
        responses={204: None, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   404: error_response("ENROLLMENT_KEY_NOT_FOUND: no key has this id.")},
    )
    def delete(self, request: Request, key_id: int) -> Response:
        enrollment_key_revoke(key=selectors.enrollment_key_get(key_id=key_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeviceEnrollApi(APIView):
    """A device enrolls itself with a fleet enrollment key and receives its own credential."""

    # The enrollment key in the body is the only identity a new device has.
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [EnrollThrottle]

    @extend_schema_serializer(component_name="DeviceEnroll")
    class InputSerializer(DeviceFieldsInputSerializer):
        """The key and the device's own description."""

        enrollment_key = serializers.CharField(max_length=200, help_text="`hse_<prefix>_<secret>`")

    @extend_schema_serializer(component_name="DeviceEnrolled")
    class OutputSerializer(serializers.Serializer):
        """The device's credential (shown once) and what it needs to start checking in."""

        device_id = serializers.CharField()
        credential = serializers.CharField(help_text="`hsd_<prefix>_<secret>`: shown once; keep it.")
        protocol = serializers.IntegerField(help_text="the check-in protocol version the server speaks")
        checkin_url = serializers.CharField()
        poll_interval_seconds = serializers.IntegerField()
        manifest_public_key = inline_serializer("ManifestPublicKey", fields={
            "key_id": serializers.CharField(),
            "algorithm": serializers.CharField(),
            "public_key": serializers.CharField(help_text="base64 of the raw 32-byte Ed25519 public key"),
        })

    @extend_schema(
        tags=["enrollment"],
        summary="Enroll a device",
        description="No authentication: the fleet enrollment key is in the body (devices/PROTOCOL.md §1). "
                    "Registers the device, uses up one use of the key and returns the device's credential "
                    "(shown once) with the check-in URL, the poll interval and the manifest public key to pin. "
                    "Throttled per client IP (`THROTTLE_ENROLL`, 60/minute by default). Errors: 400 "
                    "VALIDATION_ERROR, 403 ENROLLMENT_KEY_INVALID (unknown, revoked, expired or used up), "
                    "409 DEVICE_EXISTS (an operator can issue the existing device a new credential).",
        auth=[],
        request=InputSerializer,
        responses={201: OutputSerializer, 400: VALIDATION_ERROR,
                   403: error_response("ENROLLMENT_KEY_INVALID: unknown, revoked, expired or used up."),
                   409: error_response("DEVICE_EXISTS: a device with this device_id is registered."),
                   429: RATE_LIMITED},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        device, credential = device_enroll(
            raw_key=data["enrollment_key"], device_id=data["device_id"], name=data["name"],
            device_type=data["device_type"], region=data["region"], tags=data["tags"],
            capabilities=data["capabilities"],
        )
        body = {"device_id": device.device_id, "credential": credential, "protocol": PROTOCOL_VERSION,
                "checkin_url": CHECKIN_PATH,
                "poll_interval_seconds": settings.DEVICE_POLL_INTERVAL_SECONDS,
                "manifest_public_key": manifests.public_key_info()}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)

