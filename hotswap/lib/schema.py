"""OpenAPI schema: view-named components (HackSoft style), the standard error responses, strict request bodies."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from hotswap.lib.pagination import PageNumberPagination

# The error every operation can answer, whatever its own annotations say, and when (see _standard_errors).
STANDARD_ERRORS = {
    "400": "VALIDATION_ERROR (every problem in `details`: field, message) or MALFORMED_REQUEST.",
    "401": "NOT_AUTHENTICATED or AUTHENTICATION_FAILED: missing, invalid, expired or revoked credentials.",
    "403": "PERMISSION_DENIED: the caller's role does not allow this operation.",
    "404": "NOT_FOUND: no such resource, or no such page of a list.",
    "429": "RATE_LIMITED: too many requests; see the Retry-After header.",
}


class ViewNamedAutoSchema(AutoSchema):
    """Names nested serializers after their view and documents every error an operation can answer.

    `ModelVersionApproveApi.InputSerializer` becomes component `ModelVersionApproveApiInput`, not `Input`.
    The common errors are added here, once, from what the view declares (body or query parameters: 400,
    authentication: 401, a required permission: 403, path parameters or pages: 404, throttles: 429), so an
    operation's own `responses` only needs its specific errors (409 and the like) and better descriptions.
    Every 4xx/5xx answer carries the standard error body.
    """

    def _get_serializer_name(self, serializer, direction, bypass_extensions=False) -> str:
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        qualname = type(serializer).__qualname__
        outer, _, inner = qualname.rpartition(".")
        if outer and "<locals>" not in outer and name.startswith(inner.removesuffix("Serializer")):
            return outer.replace(".", "") + name
        return name

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and not parameter.get("required"):
                # `?status=` is the same as no `status` (django-filter, DRF and hotswap.lib.query agree).
                parameter["allowEmptyValue"] = True
                if parameter["name"] in PAGE_QUERY_PARAMETERS:
                    parameter["schema"].setdefault("minimum", 1)
        responses = operation["responses"]
        for code in self._standard_errors(operation):
            responses.setdefault(code, {"description": STANDARD_ERRORS[code]})
        for code, response in responses.items():
            if code >= "400" and "content" not in response:
                description = response.get("description") or STANDARD_ERRORS.get(code, "")
                response.update(self._get_response_for_code(_error_serializer(), code), description=description)
        return operation

    def _operation_view(self):
        """The view serving this method: a method_router (hotswap.lib.routing) hands each method to its own."""
        operation_view = getattr(self.view, "operations", {}).get(self.method)
        return operation_view() if operation_view else self.view

    def _get_paginator(self):
        pagination_class = getattr(self._operation_view(), "pagination_class", None)
        return pagination_class() if pagination_class else None

    def _standard_errors(self, operation: dict) -> list[str]:
        parameters = operation.get("parameters", [])
        view = self._operation_view()
        codes = []
        if "requestBody" in operation or any(p["in"] == "query" for p in parameters):
            codes.append("400")
        if view.get_authenticators() and not any(isinstance(p, AllowAny) for p in view.get_permissions()):
            codes.append("401")
        if getattr(view, "required_permission", None):
            codes.append("403")
        if any(p["in"] == "path" or p["name"] in PAGE_QUERY_PARAMETERS for p in parameters):
            codes.append("404")
        if view.get_throttles():
            codes.append("429")
        return codes


PAGE_QUERY_PARAMETERS = (PageNumberPagination.page_query_param, PageNumberPagination.page_size_query_param)


def _error_serializer():
    from hotswap.accounts.schema import ErrorSerializer  # the accounts app imports this module's users

    return ErrorSerializer


class StrictSerializerExtension(OpenApiSerializerExtension):
    """A serializer that refuses unknown fields says so: `additionalProperties: false`."""

    target_class = "devices.apis.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


def paginated_serializer(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The page envelope of hotswap.lib.pagination around `item` (a `many=True` serializer), as a component."""
    return inline_serializer(name, fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item,
    })


def ordering_parameter(keys) -> OpenApiParameter:
    """`?ordering=key` or `-key` (reversed), for each of `keys`."""
    return OpenApiParameter("ordering", str, enum=[f"{sign}{key}" for key in keys for sign in ("", "-")],
                            description="Sort key; prefix - to reverse.")
