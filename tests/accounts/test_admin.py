"""The admin: tokens created through the service (key shown once), revoked by an action; users show their role."""

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/accounts/apitoken/"


@pytest.fixture
def admin_client(make_user) -> Client:
    client = Client()
    client.force_login(make_user(Role.ADMIN, is_staff=True))
    return client


def test_it_creates_a_token_and_shows_the_key_once(admin_client, make_user, token_client):
    ci_user = make_user(Role.MODEL_DEVELOPER)

    response = admin_client.post(f"{CHANGELIST}add/", {"user": ci_user.pk, "name": "jenkins",
                                                      "expires_at_0": "", "expires_at_1": ""}, follow=True)

    assert response.status_code == 200
    token = ApiToken.objects.get()
    assert token.user == ci_user and token.name == "jenkins"
    key = next(m.message for m in get_messages(response.wsgi_request) if "shown only this once" in m.message)
    key = key.rsplit(" ", 1)[-1]
    assert key.startswith(f"hs_{token.prefix}_")
    assert token_client(key).get("/api/v1/auth/me").json()["username"] == ci_user.username
    # Gone after that one page: neither the list nor the detail page shows the key or its hash.
    for page in (admin_client.get(CHANGELIST), admin_client.get(f"{CHANGELIST}{token.pk}/change/")):
        assert page.status_code == 200
        html = page.content.decode()
        assert key not in html and token.key_hash not in html


def test_it_rejects_an_expiry_in_the_past(admin_client, make_user):
    response = admin_client.post(f"{CHANGELIST}add/", {"user": make_user().pk, "name": "late",
                                                      "expires_at_0": "2001-01-01", "expires_at_1": "00:00:00"})

    assert response.status_code == 200
    assert "The expiry must be in the future." in response.content.decode()
    assert not ApiToken.objects.exists()


def test_it_revokes_the_selected_tokens(admin_client, make_token, token_client):
    first, first_key = make_token(name="one")
    second, _ = make_token(name="two")
    untouched, _ = make_token(name="three")

    response = admin_client.post(CHANGELIST, {"action": "revoke_selected",
                                              "_selected_action": [first.pk, second.pk]}, follow=True)

    assert response.status_code == 200
    assert "Revoked 2 token(s)" in response.content.decode()
    revoked = {t.name: t.revoked_at for t in ApiToken.objects.all()}
    assert revoked["one"] and revoked["two"] and revoked["three"] is None
    assert ApiToken.objects.get(pk=first.pk).revoked_by is not None
    assert untouched.is_usable()
    assert token_client(first_key).get("/api/v1/auth/me").status_code == 401


def test_it_does_not_change_an_existing_token(admin_client, make_token):
    token, _ = make_token(name="original")

    admin_client.post(f"{CHANGELIST}{token.pk}/change/", {"name": "renamed"})

    token.refresh_from_db()
    assert token.name == "original"


def test_it_shows_each_users_role_in_the_user_list(admin_client, make_user):
    make_user(Role.OPERATOR, username="olga")

    response = admin_client.get("/admin/auth/user/", {"q": "olga"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "olga" in html and "Operator" in html
