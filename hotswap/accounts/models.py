"""API tokens: revocable credentials for CI, of which only a hash is stored."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from hotswap.accounts.keys import HASH_PATTERN, PREFIX_LENGTH, PREFIX_PATTERN


class ApiToken(models.Model):
    """A named, revocable key that authenticates CI as its user; the raw key is shown once and never stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # Public part of the key: found by an index lookup, then the secret's hash is compared.
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False,
                              validators=[RegexValidator(PREFIX_PATTERN, "A prefix is 8 lowercase hex characters.")])
    key_hash = models.CharField(max_length=64, editable=False,
                                validators=[RegexValidator(HASH_PATTERN, "A key hash is a SHA-256 hex digest.")])
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="created_api_tokens")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="revoked_api_tokens", editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        constraints = [
            models.CheckConstraint(condition=Q(prefix__regex=PREFIX_PATTERN), name="apitoken_prefix_format"),
            models.CheckConstraint(condition=Q(key_hash__regex=HASH_PATTERN), name="apitoken_key_hash_format"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def is_usable(self, now: datetime | None = None) -> bool:
        return self.revoked_at is None and not self.is_expired(now)
