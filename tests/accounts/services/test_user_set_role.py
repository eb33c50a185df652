"""user_set_role: one role group at a time, other groups untouched."""

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError

from hotswap.accounts.roles import Role
from hotswap.accounts.services import user_set_role

pytestmark = pytest.mark.django_db


def test_it_replaces_the_users_role(make_user):
    user = make_user(Role.VIEWER)
    assert not user.has_perm("accounts.add_apitoken")

    user_set_role(user=user, role=Role.ADMIN)

    assert list(user.groups.values_list("name", flat=True)) == [Role.ADMIN]
    assert user.has_perm("accounts.add_apitoken")  # no stale permission cache


def test_it_keeps_groups_that_are_not_roles(make_user):
    user = make_user(Role.OPERATOR)
    team = Group.objects.create(name="team-vision")
    user.groups.add(team)

    user_set_role(user=user, role=Role.VIEWER)

    assert set(user.groups.values_list("name", flat=True)) == {Role.VIEWER, "team-vision"}


def test_it_rejects_an_unknown_role(make_user):
    user = make_user(Role.VIEWER)

    with pytest.raises(ValidationError):
        user_set_role(user=user, role="Superhero")

    assert list(user.groups.values_list("name", flat=True)) == [Role.VIEWER]
