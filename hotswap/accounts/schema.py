"""OpenAPI pieces for the API docs: the API token security scheme and the standard error body."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes ApiTokenAuthentication in the OpenAPI security schemes."""

    target_class = "hotswap.accounts.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A revocable API token for CI: `Authorization: Token hs_<prefix>_<secret>`.",
        }


class ErrorDetailSerializer(serializers.Serializer):
    """One problem with one field ("" when it concerns the whole request)."""

    field = serializers.CharField()
    message = serializers.CharField()


class ErrorBodySerializer(serializers.Serializer):
    """What went wrong, in a machine-readable code and a human-readable message."""

    code = serializers.CharField(help_text="e.g. VALIDATION_ERROR, AUTHENTICATION_FAILED, RATE_LIMITED")
    message = serializers.CharField()
    details = ErrorDetailSerializer(many=True)
    trace_id = serializers.CharField(allow_null=True, help_text="The request id, also sent as X-Request-ID.")
    timestamp = serializers.DateTimeField()


class ErrorSerializer(serializers.Serializer):
    """The shape of every API error (hotswap.exceptions.api_exception_handler)."""

    error = ErrorBodySerializer()


def error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


UNAUTHENTICATED = error_response("AUTHENTICATION_FAILED or NOT_AUTHENTICATED: missing, invalid, expired or revoked "
                                 "credentials.")
FORBIDDEN = error_response("PERMISSION_DENIED: the caller's role does not allow this operation.")
