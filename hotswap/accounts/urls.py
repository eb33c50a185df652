"""Accounts API routes: JWT login, who-am-I, API tokens."""

from django.urls import path

from hotswap.accounts.apis import (
    ApiTokenCreateApi,
    ApiTokenListApi,
    ApiTokenRevokeApi,
    AuthMeApi,
    AuthTokenObtainApi,
    AuthTokenRefreshApi,
)
from hotswap.lib.routing import method_router

urlpatterns = [
    path("auth/token", AuthTokenObtainApi.as_view(), name="auth-token-obtain"),
    path("auth/token/refresh", AuthTokenRefreshApi.as_view(), name="auth-token-refresh"),
    path("auth/me", AuthMeApi.as_view(), name="auth-me"),
    path("tokens", method_router("ApiTokens", get=ApiTokenListApi, post=ApiTokenCreateApi), name="api-tokens"),
    path("tokens/<int:token_id>", ApiTokenRevokeApi.as_view(), name="api-token-revoke"),
]
