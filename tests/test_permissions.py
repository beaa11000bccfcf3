"""Every console page, for every role: 200 where the role may open it, 403 where not, login for strangers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests import console_data

ROLES = ["board_member", "rcm_analyst", "executive", "engineer", "outsider"]

# page → the roles that may open it (everyone else gets 403).
PAGES: dict[str, set[str]] = {
    "/dashboard/": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/dashboard/tiles/": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/exceptions/": {"board_member", "rcm_analyst", "engineer"},
    "/exceptions/counts/": {"board_member", "rcm_analyst", "engineer"},
    "/exceptions/{exception}/": {"board_member", "rcm_analyst", "engineer"},
    "/messages/": {"engineer"},
    "/messages/{message}/": {"engineer"},
    "/dashboard/export.csv": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/dashboard/drill/dnfb/": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/dashboard/drill/exceptions/": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/dashboard/export/sla.csv": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/workflows/runs/": {"rcm_analyst", "engineer"},
    "/workflows/close/": {"rcm_analyst", "engineer"},
    "/connectors/": {"board_member", "engineer"},
    "/ops/": {"engineer"},
    "/ops/alerts/": {"executive", "engineer"},
    "/ops/alerts/badge/": {"executive", "engineer"},
    "/governance/": {"board_member", "rcm_analyst", "executive", "engineer"},
    "/governance/propose/workflow_sla/?key=discharge_to_bill": {"board_member", "engineer"},
    "/governance/propose/code_table/": {"board_member", "engineer"},
    "/api-clients/": {"engineer"},
}
ACTIONS = ["assign", "comment", "resolve", "ignore", "retry", "resubmit"]
WORKERS = {"rcm_analyst", "engineer"}


@pytest.fixture
def urls(db: None) -> dict[str, str]:
    message = console_data.message()
    exception = console_data.exception_item(message=message)
    return {page: page.format(exception=exception.pk, message=message.pk) for page in PAGES}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", list(PAGES))
def test_each_role_opens_exactly_its_pages(
    request: pytest.FixtureRequest,
    client_for: Callable[[User], Client],
    urls: dict[str, str],
    role: str,
    page: str,
) -> None:
    client = client_for(request.getfixturevalue(role))
    response = client.get(urls[page])
    assert response.status_code == (200 if role in PAGES[page] else 403)


@pytest.mark.parametrize("page", list(PAGES))
def test_anonymous_visitors_are_sent_to_login(client: Client, urls: dict[str, str], page: str) -> None:
    response = client.get(urls[page])
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS)
def test_only_workers_may_act_on_exceptions(
    request: pytest.FixtureRequest, client_for: Callable[[User], Client], db: None, role: str, action: str
) -> None:
    exception = console_data.exception_item()
    client = client_for(request.getfixturevalue(role))
    response = client.post(f"/exceptions/{exception.pk}/{action}/", {})
    if role in WORKERS:
        # Allowed through the permission check: a form error (400) or the action's redirect, never 403.
        assert response.status_code in {302, 400}
    else:
        assert response.status_code == 403


def test_anonymous_actions_are_sent_to_login(client: Client, db: None) -> None:
    exception = console_data.exception_item()
    response = client.post(f"/exceptions/{exception.pk}/comment/", {"comment-body": "hi"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert exception.comments.count() == 0


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("board_member", "/dashboard/"),
        ("rcm_analyst", "/dashboard/"),
        ("executive", "/dashboard/"),
        ("engineer", "/dashboard/"),
    ],
)
def test_home_sends_each_role_to_its_first_section(
    request: pytest.FixtureRequest, client_for: Callable[[User], Client], role: str, expected: str
) -> None:
    response = client_for(request.getfixturevalue(role)).get("/")
    assert response.status_code == 302
    assert response["Location"] == expected


def test_home_refuses_an_outsider(client_for: Callable[[User], Client], outsider: User) -> None:
    assert client_for(outsider).get("/").status_code == 403


def test_home_sends_anonymous_visitors_to_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_home_sends_a_message_only_user_to_messages(client_for: Callable[[User], Client], db: None) -> None:
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("reader", password="x" * 12)
    user.user_permissions.add(Permission.objects.get(codename="view_message"))
    response = client_for(user).get("/")
    assert response["Location"] == "/messages/"


@pytest.mark.parametrize(
    ("role", "shown", "hidden"),
    [
        ("executive", ["Dashboard"], ["Exceptions", "Messages"]),
        ("rcm_analyst", ["Dashboard", "Exceptions"], ["Messages"]),
        ("engineer", ["Dashboard", "Exceptions", "Messages"], []),
    ],
)
def test_navigation_shows_only_the_sections_a_role_may_open(
    request: pytest.FixtureRequest,
    client_for: Callable[[User], Client],
    role: str,
    shown: list[str],
    hidden: list[str],
) -> None:
    response = client_for(request.getfixturevalue(role)).get("/dashboard/")
    nav = response.content.decode().split('aria-label="Main"')[1].split("</nav>")[0]
    for label in shown:
        assert f">{label}</a>" in nav
    for label in hidden:
        assert f">{label}</a>" not in nav


def test_login_page_renders_and_signs_in(client: Client, executive: User) -> None:
    from tests.conftest import PASSWORD

    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="password"' in page.content
    response = client.post("/accounts/login/", {"username": "exec", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(response["Location"]).status_code == 302  # home → dashboard


def test_login_page_shows_an_error_for_a_wrong_password(client: Client, executive: User) -> None:
    response = client.post("/accounts/login/", {"username": "exec", "password": "wrong-password-123"})
    assert response.status_code == 200
    assert b'role="alert"' in response.content
