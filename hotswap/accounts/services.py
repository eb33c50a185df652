"""Writes for accounts: role groups, a user's role, API tokens, expired JWTs."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser, Group, Permission
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from hotswap.accounts import keys
from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import ROLE_PERMISSIONS, Role

# A hot CI loop authenticates many times a minute; one write per token per window is plenty.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _permissions_named(names: list[str], *, using: str) -> list[Permission]:
    """The Permission rows for "app_label.codename" names; names without a row yet are skipped."""
    query = Q(pk__in=[])
    for name in names:
        app_label, codename = name.split(".", 1)
        query |= Q(content_type__app_label=app_label, codename=codename)
    return list(Permission.objects.using(using).filter(query))


@transaction.atomic
def roles_ensure(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create the four role groups and set each one's permissions to exactly what roles.py says."""
    for role in Role:
        group, _ = Group.objects.using(using).get_or_create(name=role.value)
        if role == Role.ADMIN:
            permissions = list(Permission.objects.using(using).all())
        else:
            permissions = _permissions_named(ROLE_PERMISSIONS[role], using=using)
        # set() removes whatever was added by hand, so the code stays the single source of truth.
        group.permissions.set(permissions)


@transaction.atomic
def user_set_role(*, user: AbstractBaseUser, role: str) -> AbstractBaseUser:
    """Put the user in exactly one role group, keeping any non-role groups they belong to."""
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(Role.values)}."})
    group = Group.objects.get(name=role)
    user.groups.remove(*Group.objects.filter(name__in=Role.values).exclude(pk=group.pk))
    user.groups.add(group)
    # ModelBackend caches permissions on the instance; the caller may check them right away.
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)
    return user


def api_token_expiry_validate(expires_at: datetime | None, *, now: datetime | None = None) -> None:
    if expires_at is not None and expires_at <= (now or timezone.now()):
        raise ValidationError({"expires_at": "The expiry must be in the future."})


@transaction.atomic
def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    created_by: AbstractBaseUser | None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for `user`; returns it with the raw key, which exists nowhere else afterwards."""
    api_token_expiry_validate(expires_at, now=now)
    prefix = keys.prefix_make()
    # 2**32 prefixes: a collision is rare, but the unique index would turn one into a 500.
    while ApiToken.objects.filter(prefix=prefix).exists():
        prefix = keys.prefix_make()
    secret = keys.secret_make()
    token = ApiToken(user=user, name=name, prefix=prefix, key_hash=keys.secret_hash(secret),
                     created_by=created_by, expires_at=expires_at)
    token.full_clean()
    token.save()
    return token, keys.key_join(prefix, secret)


@transaction.atomic
def api_token_revoke(*, token: ApiToken, revoked_by: AbstractBaseUser | None, now: datetime | None = None) -> ApiToken:
    """Revoke the token; revoking it again changes nothing (the first revocation's time and actor stay)."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=now or timezone.now(), revoked_by=revoked_by
    )
    token.refresh_from_db(fields=["revoked_at", "revoked_by"])
    return token


def api_token_touch(*, token: ApiToken, now: datetime | None = None) -> bool:
    """Record a use at most once per LAST_USED_RESOLUTION; True when this call wrote it."""
    now = now or timezone.now()
    threshold = now - LAST_USED_RESOLUTION
    if token.last_used_at is not None and token.last_used_at > threshold:
        return False
    # Conditional UPDATE: of many concurrent requests, only the first in the window writes.
    written = ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=threshold), pk=token.pk
    ).update(last_used_at=now)
    if written:
        token.last_used_at = now
    return bool(written)


def jwt_expired_tokens_delete(*, now: datetime | None = None) -> int:
    """Forget refresh tokens that have expired, with their blacklist rows (simplejwt's flushexpiredtokens).

    An expired token is refused for its expiry whether it is blacklisted or not, so nothing is lost.
    """
    _, deleted = OutstandingToken.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted.get(OutstandingToken._meta.label, 0)
