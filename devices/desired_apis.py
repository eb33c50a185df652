"""Operators set desired state directly (before and beside rollouts): one device, or every device of a filter."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device
from devices.services.desired_state import desired_state_set
from devices.targets import devices_targeted
from hotswap.exceptions import NotFoundError
from models_app.selectors import model_version_get

DESCRIPTION = (
    "Roles: Admin, Operator. `version` is a model_id (`{name}-{version}`) or null for 'nothing in particular'. "
    "Devices converge at their next check-in. Errors: 400 VERSION_NOT_DEPLOYABLE (failed, or deprecated "
    "without rollback), 404 MODEL_NOT_FOUND / DEVICE_NOT_FOUND."
)


class DesiredResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField()
    changed = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    skipped = serializers.ListField(child=serializers.DictField())


class DesiredInputSerializer(serializers.Serializer):
    version = serializers.CharField(allow_null=True, max_length=129)
    rollback = serializers.BooleanField(default=False)
    reason = serializers.CharField(default="", allow_blank=True, max_length=500)


def _apply(request: Request, data: dict, devices) -> Response:
    version = model_version_get(model_id=data["version"]) if data["version"] else None
    devices = list(devices)
    result = desired_state_set(devices=devices, version=version, actor=request.user, rollback=data["rollback"],
                               reason=data["reason"], source="manual")
    return Response({"matched": len(devices), "changed": result.changed, "unchanged": result.unchanged,
                     "skipped": result.skipped})


class DeviceDesiredSetApi(APIView):
    """Sets the model version one device should run."""

    required_permission = "devices.set_desired_version"

    @extend_schema(summary="Set a device's desired version", description=DESCRIPTION,
                   request=DesiredInputSerializer,
                   responses={200: DesiredResultSerializer, 400: OpenApiResponse(description="VERSION_NOT_DEPLOYABLE"),
                              404: OpenApiResponse(description="DEVICE_NOT_FOUND / MODEL_NOT_FOUND")})
    def put(self, request: Request, device_id: str) -> Response:
        serializer = DesiredInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = Device.objects.filter(device_id=device_id).first()
        if device is None:
            raise NotFoundError(f"Device '{device_id}' does not exist.", code="DEVICE_NOT_FOUND")
        return _apply(request, serializer.validated_data, [device])


class DevicesDesiredSetApi(APIView):
    """Sets the model version every device matching a filter should run."""

    required_permission = "devices.set_desired_version"

    class InputSerializer(DesiredInputSerializer):
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

    @extend_schema(summary="Set the desired version of every device matching a filter", description=DESCRIPTION,
                   request=InputSerializer, responses={200: DesiredResultSerializer,
                                                       400: OpenApiResponse(description="VALIDATION_ERROR"),
                                                       404: OpenApiResponse(description="MODEL_NOT_FOUND")})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        devices = devices_targeted(regions=data["regions"], device_types=data["device_types"], tags=data["tags"],
                                   device_ids=data["device_ids"], min_memory_mb=data["min_memory_mb"])
        return _apply(request, data, devices)
