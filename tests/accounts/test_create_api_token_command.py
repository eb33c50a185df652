"""manage.py create_api_token: prints a working key, and only the key, on stdout."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role

pytestmark = pytest.mark.django_db


def _run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_it_prints_a_key_that_works(make_user, token_client):
    user = make_user(Role.MODEL_DEVELOPER, username="ci")

    key, notice = _run("--username", "ci", "--name", "github-actions")

    token = ApiToken.objects.get()
    assert key.startswith(f"hs_{token.prefix}_") and "\n" not in key
    assert token.name == "github-actions" and token.user == user and token.expires_at is None
    assert "never expires" in notice and key not in notice
    assert token_client(key).get("/api/v1/auth/me").json()["username"] == "ci"


def test_it_sets_the_expiry(make_user):
    make_user(Role.ADMIN, username="ops")

    _run("--username", "ops", "--name", "nightly", "--expires-days", "7")

    expected = timezone.now() + timedelta(days=7)
    assert abs(ApiToken.objects.get().expires_at - expected) < timedelta(minutes=1)


@pytest.mark.parametrize("args", [
    ("--username", "nobody", "--name", "x"),
    ("--username", "ops", "--name", "x", "--expires-days", "0"),
])
def test_it_fails_loudly_on_bad_arguments(make_user, args):
    make_user(Role.ADMIN, username="ops")

    with pytest.raises(CommandError):
        _run(*args)

    assert not ApiToken.objects.exists()
