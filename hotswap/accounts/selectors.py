"""Reads for accounts: a user's roles and permissions, API tokens."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role


def user_roles(*, user: AbstractBaseUser) -> list[str]:
    return sorted(user.groups.filter(name__in=Role.values).values_list("name", flat=True))


def user_access_get(*, user: AbstractBaseUser) -> dict:
    """Who the user is to the API: username, role groups and every permission they hold."""
    return {
        "id": user.pk,
        "username": user.get_username(),
        "roles": user_roles(user=user),
        "permissions": sorted(user.get_all_permissions()),
        "is_superuser": bool(getattr(user, "is_superuser", False)),
    }


def api_token_list(*, user: AbstractBaseUser, username: str | None = None,
                   active: bool | None = None) -> QuerySet[ApiToken]:
    """Tokens the user may see: every token for holders of accounts.view_apitoken (Admin), else their own."""
    tokens = ApiToken.objects.select_related("user", "created_by", "revoked_by")
    if not user.has_perm("accounts.view_apitoken"):
        tokens = tokens.filter(user=user)
    if username:
        tokens = tokens.filter(user__username=username)
    if active is not None:
        usable = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        tokens = tokens.filter(usable if active else ~usable)
    return tokens


def api_token_get(*, token_id: int) -> ApiToken | None:
    return ApiToken.objects.select_related("user").filter(pk=token_id).first()


def api_token_get_by_prefix(*, prefix: str) -> ApiToken | None:
    """The token with this public prefix, its user loaded in the same query (the auth hot path)."""
    return ApiToken.objects.select_related("user").filter(prefix=prefix).first()
