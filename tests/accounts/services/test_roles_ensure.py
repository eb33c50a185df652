"""roles_ensure: the four groups hold exactly the permissions roles.py names, whatever was done by hand."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management.sql import emit_post_migrate_signal

from hotswap.accounts.roles import ROLE_PERMISSIONS, Role
from hotswap.accounts.services import roles_ensure

pytestmark = pytest.mark.django_db


def _names(group: Group) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def _existing(names: list[str]) -> set[str]:
    return {n for n in names if Permission.objects.filter(
        content_type__app_label=n.split(".")[0], codename=n.split(".")[1]).exists()}


def test_it_creates_the_four_groups():
    Group.objects.all().delete()

    roles_ensure()

    assert set(Group.objects.values_list("name", flat=True)) == set(Role.values)


def test_it_gives_each_role_exactly_its_listed_permissions_that_exist():
    roles_ensure()

    for role in (Role.VIEWER, Role.MODEL_DEVELOPER, Role.OPERATOR):
        assert _names(Group.objects.get(name=role)) == _existing(ROLE_PERMISSIONS[role])


def test_it_gives_viewer_only_view_permissions():
    roles_ensure()

    names = _names(Group.objects.get(name=Role.VIEWER))
    assert names  # models_app's view permissions exist already
    assert all(name.split(".")[1].startswith("view_") for name in names)


def test_it_gives_admin_every_permission():
    roles_ensure()

    assert Group.objects.get(name=Role.ADMIN).permissions.count() == Permission.objects.count()


def test_it_removes_a_permission_added_by_hand_and_restores_one_removed():
    viewer = Group.objects.get(name=Role.VIEWER)
    extra = Permission.objects.get(content_type__app_label="accounts", codename="add_apitoken")
    removed = Permission.objects.get(content_type__app_label="models_app", codename="view_aimodel")
    viewer.permissions.add(extra)
    viewer.permissions.remove(removed)

    roles_ensure()

    names = _names(viewer)
    assert "accounts.add_apitoken" not in names
    assert "models_app.view_aimodel" in names


def test_it_is_idempotent():
    roles_ensure()
    before = {g.name: _names(g) for g in Group.objects.all()}

    roles_ensure()

    assert {g.name: _names(g) for g in Group.objects.all()} == before
    assert Group.objects.count() == 4


def test_it_runs_after_every_migrate():
    viewer = Group.objects.get(name=Role.VIEWER)
    viewer.permissions.add(Permission.objects.get(codename="delete_apitoken"))

    # What `migrate` (and a TransactionTestCase flush) sends once the schema is in place.
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert "accounts.delete_apitoken" not in _names(viewer)


def test_it_has_already_run_when_the_test_database_was_created():
    # No roles_ensure() call here: migrate's post_migrate signal did it, after every app's permissions existed.
    for role in (Role.VIEWER, Role.MODEL_DEVELOPER, Role.OPERATOR):
        assert _names(Group.objects.get(name=role)) == _existing(ROLE_PERMISSIONS[role])
    assert Group.objects.get(name=Role.ADMIN).permissions.count() == Permission.objects.count()
