"""Operators set model slots' desired state directly (before and beside rollouts): one device, or a filter.

A device runs several models; each change touches one model's slot (the version's model, or the model
removed) and leaves every other model on the device as it is.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device
from devices.services.desired_state import DesiredStateResult, desired_model_remove, desired_state_set
from devices.targets import devices_targeted
from hotswap.exceptions import ApplicationError, NotFoundError
from hotswap_device.protocol import MAX_MODELS
from models_app.models import AIModel
from models_app.selectors import model_version_get

ROLES = "Roles: Admin, Operator. Devices converge at their next check-in; other models on them stay as they are. "
SET_DESCRIPTION = ROLES + (
    "`version` is a model_id (`{name}-{version}`): that model's slot on each device gets it (created if the device "
    "does not have the model yet). A version older (semver) than the one a device runs needs `rollback: true`. "
    "Errors: 400 VERSION_NOT_DEPLOYABLE (failed, or deprecated without rollback), 400 ROLLBACK_NOT_MARKED (older "
    f"than a running version, not marked a rollback), 400 TOO_MANY_MODELS (a device would run more than "
    f"{MAX_MODELS} models), 404 MODEL_NOT_FOUND / DEVICE_NOT_FOUND, 409 DISTRIBUTION_IN_PROGRESS (an open "
    "distribution of that model holds a device: pause or abort it first). All or nothing; details name the devices."
)
REMOVE_DESCRIPTION = ROLES + (
    "The device unloads and deletes `model` (its slot's desired state becomes `remove`). Devices without the model "
    "are counted unchanged. Errors: 400 VALIDATION_ERROR (unknown model), 404 DEVICE_NOT_FOUND, 409 "
    "DISTRIBUTION_IN_PROGRESS (an open distribution of that model holds a device)."
)
_ERRORS = {
    400: OpenApiResponse(description="VALIDATION_ERROR / VERSION_NOT_DEPLOYABLE / ROLLBACK_NOT_MARKED / "
                                     "TOO_MANY_MODELS"),
    404: OpenApiResponse(description="DEVICE_NOT_FOUND / MODEL_NOT_FOUND"),
    409: OpenApiResponse(description="DISTRIBUTION_IN_PROGRESS"),
}


class DesiredResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text="devices the request named or its filter matched")
    changed = serializers.IntegerField()
    unchanged = serializers.IntegerField(help_text="already in that state")
    skipped = serializers.ListField(child=serializers.DictField(), help_text="[{device_id, reason}]")


class DesiredInputSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=129, help_text="model_id of the version to run, `{name}-{version}`")
    rollback = serializers.BooleanField(default=False, help_text="going back to an older version (devices accept "
                                                                 "the downgrade)")
    reason = serializers.CharField(default="", allow_blank=True, max_length=500)


class RemoveInputSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=64, help_text="name of the model to remove")
    reason = serializers.CharField(default="", allow_blank=True, max_length=500)


class FilterSerializer(serializers.Serializer):
    """Which devices a change is for: every criterion must hold (lists match any of their values)."""

    regions = serializers.ListField(child=serializers.CharField(max_length=64), default=list)
    device_types = serializers.ListField(child=serializers.CharField(max_length=64), default=list)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), default=list)
    device_ids = serializers.ListField(child=serializers.CharField(max_length=64), default=list, max_length=10_000)
    min_memory_mb = serializers.IntegerField(required=False, allow_null=True, min_value=0, default=None)

    def validate(self, attrs):
        if not any(attrs[k] for k in ("regions", "device_types", "tags", "device_ids")) and \
                attrs["min_memory_mb"] is None:
            raise serializers.ValidationError("Give at least one filter (regions, device_types, tags, "
                                              "device_ids or min_memory_mb); a fleet-wide change is a rollout.")
        return attrs


def _answer(result: DesiredStateResult) -> Response:
    return Response({"matched": result.matched, "changed": result.changed, "unchanged": result.unchanged,
                     "skipped": result.skipped})


def _set(request: Request, data: dict, devices: list[Device] | QuerySet[Device]) -> Response:
    version = model_version_get(model_id=data["version"])
    # A filter goes to the service as a QuerySet: it sorts the devices out in the database (no instances).
    return _answer(desired_state_set(devices=devices, version=version, actor=request.user,
                                     rollback=data["rollback"], reason=data["reason"], source="manual"))


def _remove(request: Request, data: dict, devices: list[Device] | QuerySet[Device]) -> Response:
    ai_model = AIModel.objects.filter(name=data["model"]).first()
    if ai_model is None:
        raise ApplicationError(f"No model is named '{data['model']}'.", code="VALIDATION_ERROR",
                               details=[{"field": "model", "message": "Unknown model."}])
    return _answer(desired_model_remove(devices=devices, ai_model=ai_model, actor=request.user,
                                        reason=data["reason"], source="manual"))


def _one_device(device_id: str) -> list[Device]:
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        raise NotFoundError(f"Device '{device_id}' does not exist.", code="DEVICE_NOT_FOUND")
    return [device]


def _filtered(data: dict) -> QuerySet[Device]:
    return devices_targeted(regions=data["regions"], device_types=data["device_types"], tags=data["tags"],
                            device_ids=data["device_ids"], min_memory_mb=data["min_memory_mb"])


class _DeviceChange(APIView):
    """One device's slot changes: the body is validated by `InputSerializer`, applied by `apply`."""

    required_permission = "devices.set_desired_version"
    InputSerializer: type[serializers.Serializer]
    apply = staticmethod(_set)

    def handle(self, request: Request, device_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self.apply(request, serializer.validated_data, _one_device(device_id))


class _FilteredChange(APIView):
    """The slots of every device matching the body's filter change."""

    required_permission = "devices.set_desired_version"
    InputSerializer: type[serializers.Serializer]
    apply = staticmethod(_set)

    def handle(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self.apply(request, serializer.validated_data, _filtered(serializer.validated_data))


class DeviceDesiredSetApi(_DeviceChange):
    """Sets the version one device should run of that version's model."""

    InputSerializer = DesiredInputSerializer

    @extend_schema(summary="Set the version a device should run of one model", description=SET_DESCRIPTION,
                   request=DesiredInputSerializer, responses={200: DesiredResultSerializer, **_ERRORS})
    def put(self, request: Request, device_id: str) -> Response:
        return self.handle(request, device_id)


class DevicesDesiredSetInput(FilterSerializer, DesiredInputSerializer):
    pass


class DevicesDesiredSetApi(_FilteredChange):
    """Sets the version every device matching a filter should run of that version's model."""

    InputSerializer = DevicesDesiredSetInput

    @extend_schema(summary="Set the version every device matching a filter should run of one model",
                   description=SET_DESCRIPTION, request=DevicesDesiredSetInput,
                   responses={200: DesiredResultSerializer, **_ERRORS})
    def post(self, request: Request) -> Response:
        return self.handle(request)


class DeviceModelRemoveApi(_DeviceChange):
    """Asks one device to unload and delete a model."""

    InputSerializer = RemoveInputSerializer
    apply = staticmethod(_remove)

    @extend_schema(summary="Remove a model from a device", description=REMOVE_DESCRIPTION,
                   operation_id="device_model_remove", request=RemoveInputSerializer,
                   responses={200: DesiredResultSerializer, **_ERRORS})
    def post(self, request: Request, device_id: str) -> Response:
        return self.handle(request, device_id)


class DevicesModelRemoveInput(FilterSerializer, RemoveInputSerializer):
    pass


class DevicesModelRemoveApi(_FilteredChange):
    """Asks every device matching a filter to unload and delete a model."""

    InputSerializer = DevicesModelRemoveInput
    apply = staticmethod(_remove)

    @extend_schema(summary="Remove a model from every device matching a filter", description=REMOVE_DESCRIPTION,
                   operation_id="devices_model_remove", request=DevicesModelRemoveInput,
                   responses={200: DesiredResultSerializer, **_ERRORS})
    def post(self, request: Request) -> Response:
        return self.handle(request)
