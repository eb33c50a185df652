"""Accounts API: JWT login for people, who-am-I, and API tokens for CI."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from hotswap.accounts.authentication import ApiTokenAuthentication
from hotswap.accounts.jwt import TokenRefreshSerializer
from hotswap.accounts.models import ApiToken
from hotswap.accounts.schema import FORBIDDEN, UNAUTHENTICATED, error_response
from hotswap.accounts.selectors import api_token_get, api_token_list, user_access_get
from hotswap.accounts.services import api_token_create, api_token_revoke
from hotswap.accounts.throttles import LoginThrottle
from hotswap.exceptions import NotFoundError
from hotswap.lib.pagination import PageNumberPagination
from hotswap.lib.query import query_filters

RATE_LIMITED = error_response("RATE_LIMITED: too many attempts from this address; see the Retry-After header.")


@extend_schema(
    tags=["auth"],
    summary="Log in: obtain a JWT pair",
    description=(
        "Exchange a username and password for an access token (send it as `Authorization: Bearer <access>`) "
        "and a refresh token. Open to everyone; throttled per client IP (`THROTTLE_LOGIN`, 30/minute by default)."
    ),
    responses={
        200: TokenObtainPairSerializer,
        400: error_response("VALIDATION_ERROR: username or password missing."),
        401: error_response("AUTHENTICATION_FAILED: wrong credentials or inactive account."),
        429: RATE_LIMITED,
    },
)
class AuthTokenObtainApi(TokenObtainPairView):
    """Username and password in, access and refresh JWTs out."""

    throttle_classes = [LoginThrottle]


@extend_schema(
    tags=["auth"],
    summary="Refresh a JWT",
    description=(
        "Exchange a valid refresh token for a new access token and a new refresh token. The refresh token "
        "sent is spent: using it again answers 401. Tokens issued before the user's last password change "
        "are refused. Open to everyone holding a refresh token."
    ),
    responses={
        200: TokenRefreshSerializer,
        400: error_response("VALIDATION_ERROR: the refresh token is missing."),
        401: error_response("AUTHENTICATION_FAILED: the refresh token is invalid, expired, already used, or older "
                            "than the user's password."),
    },
)
class AuthTokenRefreshApi(TokenRefreshView):
    """A refresh JWT in, a fresh access JWT and the next refresh JWT out (hotswap.accounts.jwt)."""


def _auth_method(request: Request) -> str:
    authenticator = request.successful_authenticator
    if isinstance(authenticator, JWTAuthentication):
        return "jwt"
    if isinstance(authenticator, ApiTokenAuthentication):
        return "api_token"
    return type(authenticator).__name__.removesuffix("Authentication").lower() or "unknown"


class AuthMeApi(APIView):
    """Who the caller is: username, roles, permissions and how they authenticated."""

    # Every authenticated caller may ask who they are, whatever their role.
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="AuthMe")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="AuthMeApiToken")
        class ApiTokenSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            name = serializers.CharField()
            prefix = serializers.CharField()
            expires_at = serializers.DateTimeField(allow_null=True)

        id = serializers.IntegerField()
        username = serializers.CharField()
        roles = serializers.ListField(child=serializers.CharField())
        permissions = serializers.ListField(child=serializers.CharField(), help_text="`app_label.codename` names.")
        is_superuser = serializers.BooleanField()
        auth_method = serializers.ChoiceField(choices=["jwt", "api_token", "session"])
        api_token = ApiTokenSerializer(allow_null=True, help_text="The token used, when auth_method is api_token.")

    @extend_schema(
        tags=["auth"],
        summary="Who am I",
        description="The caller's username, roles, effective permissions and authentication method "
                    "(`jwt`, `api_token` or `session`). Roles allowed: any authenticated user "
                    "(Admin, ModelDeveloper, Operator, Viewer).",
        responses={200: OutputSerializer, 401: UNAUTHENTICATED},
    )
    def get(self, request: Request) -> Response:
        access = user_access_get(user=request.user)
        access["auth_method"] = _auth_method(request)
        access["api_token"] = request.auth if isinstance(request.auth, ApiToken) else None
        return Response(self.OutputSerializer(access).data)


class ApiTokenListApi(APIView):
    """Lists API tokens, newest first, paginated."""

    required_permission = "accounts.view_apitoken"
    pagination_class = PageNumberPagination

    class FilterSerializer(serializers.Serializer):
        username = serializers.CharField(required=False, help_text="Only this user's tokens.")
        active = serializers.BooleanField(required=False, allow_null=True, default=None,
                                          help_text="true: usable tokens; false: revoked or expired ones.")

    @extend_schema_serializer(component_name="ApiToken")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        prefix = serializers.CharField(help_text="The public part of the key, `hs_<prefix>_…`.")
        user = serializers.CharField(source="user.username")
        created_at = serializers.DateTimeField()
        created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
        last_used_at = serializers.DateTimeField(allow_null=True, help_text="Accurate to about a minute.")
        expires_at = serializers.DateTimeField(allow_null=True)
        revoked_at = serializers.DateTimeField(allow_null=True)
        revoked_by = serializers.CharField(source="revoked_by.username", allow_null=True, default=None)
        is_active = serializers.BooleanField(source="is_usable")

    @extend_schema(
        tags=["tokens"],
        summary="List API tokens",
        description="Every API token (never the keys: only their public prefixes). Roles allowed: Admin "
                    "(`accounts.view_apitoken`).",
        parameters=[
            FilterSerializer,
            OpenApiParameter("page", OpenApiTypes.INT, description="Page number, from 1."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="Items per page (default 50, max 500)."),
        ],
        responses={
            200: inline_serializer("PaginatedApiTokenList", fields={
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": OutputSerializer(many=True),
            }),
            400: error_response("VALIDATION_ERROR: a filter has a bad value."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: error_response("NOT_FOUND: the page does not exist."),
        },
    )
    def get(self, request: Request) -> Response:
        # A plain dict: a QueryDict would read a missing boolean as false.
        filters = self.FilterSerializer(data=query_filters(request.query_params).dict())
        filters.is_valid(raise_exception=True)
        tokens = api_token_list(user=request.user, **filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(tokens, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class ApiTokenCreateApi(APIView):
    """Creates an API token and returns its key, the only time the key is ever shown."""

    required_permission = "accounts.add_apitoken"

    @extend_schema_serializer(component_name="ApiTokenCreate")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. `github-actions`.")
        username = serializers.SlugRelatedField(
            source="user", slug_field="username", queryset=get_user_model().objects.all(), required=False,
            help_text="Whose token it is (CI acts as this user, with their role); defaults to the caller.",
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None,
                                               help_text="When the token stops working; never when absent.")

    @extend_schema_serializer(component_name="ApiTokenCreated")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        user = serializers.CharField(source="user.username")
        prefix = serializers.CharField()
        key = serializers.CharField(help_text="`hs_<prefix>_<secret>`: shown once, store it now.")
        created_at = serializers.DateTimeField()
        expires_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(
        tags=["tokens"],
        summary="Create an API token",
        description="Creates a revocable API token for CI and returns its raw key once (`key`); only a SHA-256 "
                    "hash is stored, so a lost key cannot be recovered, only revoked and replaced. Use it as "
                    "`Authorization: Token <key>`. Roles allowed: Admin (`accounts.add_apitoken`).",
        request=InputSerializer,
        responses={
            201: OutputSerializer,
            400: error_response("VALIDATION_ERROR: name missing or too long, unknown username, expiry in the past."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token, key = api_token_create(user=data.get("user", request.user), name=data["name"],
                                      created_by=request.user, expires_at=data["expires_at"])
        token.key = key
        return Response(self.OutputSerializer(token).data, status=status.HTTP_201_CREATED)


class ApiTokenRevokeApi(APIView):
    """Revokes an API token; revoking it again is harmless."""

    required_permission = "accounts.delete_apitoken"

    @extend_schema(
        tags=["tokens"],
        summary="Revoke an API token",
        description="The token stops working at once and stays listed, marked revoked. Revoking an already "
                    "revoked token succeeds and changes nothing. Roles allowed: Admin (`accounts.delete_apitoken`).",
        responses={
            204: None,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: error_response("API_TOKEN_NOT_FOUND: no token has this id."),
        },
    )
    def delete(self, request: Request, token_id: int) -> Response:
        token = api_token_get(token_id=token_id)
        if token is None:
            raise NotFoundError(f"No API token has id {token_id}.", code="API_TOKEN_NOT_FOUND")
        api_token_revoke(token=token, revoked_by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
