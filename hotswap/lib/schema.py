"""OpenAPI schema: nested Input/Output serializers (HackSoft style) are named after the view they live in."""

from drf_spectacular.openapi import AutoSchema


class ViewNamedAutoSchema(AutoSchema):
    """`ModelVersionApproveApi.InputSerializer` becomes component `ModelVersionApproveApiInput`, not `Input`."""

    def _get_serializer_name(self, serializer, direction, bypass_extensions=False) -> str:
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        qualname = type(serializer).__qualname__
        outer, _, inner = qualname.rpartition(".")
        if outer and "<locals>" not in outer and name.startswith(inner.removesuffix("Serializer")):
            return outer.replace(".", "") + name
        return name
