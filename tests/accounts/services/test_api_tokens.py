"""api_token_create, api_token_revoke and api_token_touch."""

import hashlib
import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from hotswap.accounts.models import ApiToken
from hotswap.accounts.services import api_token_create, api_token_revoke, api_token_touch

pytestmark = pytest.mark.django_db


def test_it_returns_the_raw_key_and_stores_only_its_hash(make_user):
    user, admin = make_user(), make_user()

    token, key = api_token_create(user=user, name="github-actions", created_by=admin)

    match = re.fullmatch(r"hs_([0-9a-f]{8})_([A-Za-z0-9_-]{43})", key)
    assert match
    prefix, secret = match.groups()
    token.refresh_from_db()
    assert token.prefix == prefix
    assert token.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token.user == user and token.created_by == admin
    stored = [str(v) for v in ApiToken.objects.filter(pk=token.pk).values().get().values()]
    assert not any(secret in value for value in stored)


def test_it_makes_a_different_key_every_time(make_user):
    user = make_user()

    keys = {api_token_create(user=user, name=f"t{i}", created_by=None)[1] for i in range(5)}

    assert len(keys) == 5


def test_it_rejects_an_expiry_in_the_past(make_user):
    with pytest.raises(ValidationError) as error:
        api_token_create(user=make_user(), name="ci", created_by=None,
                         expires_at=timezone.now() - timedelta(seconds=1))

    assert "expires_at" in error.value.message_dict
    assert not ApiToken.objects.exists()


def test_it_rejects_a_name_longer_than_100_characters(make_user):
    with pytest.raises(ValidationError):
        api_token_create(user=make_user(), name="x" * 101, created_by=None)


def test_it_revokes_once_and_keeps_the_first_revocation(make_token, make_user):
    token, _ = make_token()
    first, second = make_user(), make_user()
    t0 = timezone.now()

    api_token_revoke(token=token, revoked_by=first, now=t0)
    again = api_token_revoke(token=token, revoked_by=second, now=t0 + timedelta(hours=1))

    assert again.revoked_at == t0
    assert again.revoked_by == first
    assert not again.is_usable()


def test_it_records_use_at_most_once_a_minute(make_token):
    token, _ = make_token()
    t0 = timezone.now()

    assert api_token_touch(token=token, now=t0) is True
    assert api_token_touch(token=token, now=t0 + timedelta(seconds=30)) is False
    # A stale copy (another worker) still cannot write inside the window: the UPDATE is conditional.
    stale = ApiToken.objects.get(pk=token.pk)
    stale.last_used_at = None
    assert api_token_touch(token=stale, now=t0 + timedelta(seconds=59)) is False
    assert api_token_touch(token=token, now=t0 + timedelta(seconds=61)) is True

    token.refresh_from_db()
    assert token.last_used_at == t0 + timedelta(seconds=61)
