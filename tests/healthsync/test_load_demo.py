"""load_demo: the reference configuration and one user per role, as often as it is run."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import override_settings

from healthsync import roles
from healthsync.management.commands.load_demo import DEMO_PASSWORD, DEMO_USERS
from healthsync.models import Connector, MappingSet, SchemaVersion, System

pytestmark = pytest.mark.django_db


def _snapshot() -> dict[str, object]:
    return {
        "systems": System.objects.count(),
        "connectors": Connector.objects.count(),
        "mappings": MappingSet.objects.count(),
        "schemas": SchemaVersion.objects.count(),
        "users": sorted(
            (u.username, u.is_superuser, tuple(u.groups.values_list("name", flat=True)))
            for u in User.objects.all()
        ),
    }


def test_it_loads_the_reference_configuration_and_one_user_per_role() -> None:
    out = StringIO()
    call_command("load_demo", stdout=out)

    assert System.objects.count() >= 3
    assert Connector.objects.exists() and MappingSet.objects.exists()
    roles_held = {u.username: list(u.groups.values_list("name", flat=True)) for u in User.objects.all()}
    assert roles_held["board"] == [roles.GOVERNANCE_BOARD]
    assert roles_held["board2"] == [roles.GOVERNANCE_BOARD]
    assert roles_held["rcm"] == [roles.REVENUE_CYCLE]
    assert roles_held["exec"] == [roles.EXECUTIVE]
    assert roles_held["engineer"] == [roles.INTEGRATION_ENGINEER]
    assert User.objects.get(username="admin").is_superuser
    for username, _, _ in DEMO_USERS:
        assert authenticate(username=username, password=DEMO_PASSWORD) is not None
        assert username in out.getvalue()
    assert DEMO_PASSWORD in out.getvalue()


def test_running_it_twice_changes_nothing() -> None:
    call_command("load_demo", stdout=StringIO())
    first = _snapshot()
    call_command("load_demo", stdout=StringIO())
    assert _snapshot() == first


def test_it_restores_a_demo_users_role_and_password() -> None:
    call_command("load_demo", stdout=StringIO())
    rcm = User.objects.get(username="rcm")
    rcm.groups.clear()
    rcm.set_password("something-else-entirely")
    rcm.save()

    call_command("load_demo", stdout=StringIO())

    assert authenticate(username="rcm", password=DEMO_PASSWORD) is not None
    assert list(rcm.groups.values_list("name", flat=True)) == [roles.REVENUE_CYCLE]


def test_it_can_load_the_configuration_without_users() -> None:
    call_command("load_demo", "--no-users", stdout=StringIO())
    assert Connector.objects.exists()
    assert not User.objects.exists()


@override_settings(PRODUCTION=True)
def test_it_refuses_to_run_in_production() -> None:
    with pytest.raises(CommandError, match="production"):
        call_command("load_demo", stdout=StringIO())
    assert not User.objects.exists()
