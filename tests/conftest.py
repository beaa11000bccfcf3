"""Shared fixtures: one user per console role, and an outsider with no role at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from healthsync import roles

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Full-strength PBKDF2 costs ~0.5 s per user; tests check permissions, not hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _user(username: str, role: str | None) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.org")
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def board_member(db: None) -> User:
    return _user("board", roles.GOVERNANCE_BOARD)


@pytest.fixture
def second_board_member(db: None) -> User:
    return _user("board2", roles.GOVERNANCE_BOARD)


@pytest.fixture
def rcm_analyst(db: None) -> User:
    return _user("rcm", roles.REVENUE_CYCLE)


@pytest.fixture
def executive(db: None) -> User:
    return _user("exec", roles.EXECUTIVE)


@pytest.fixture
def engineer(db: None) -> User:
    return _user("engineer", roles.INTEGRATION_ENGINEER)


@pytest.fixture
def outsider(db: None) -> User:
    return _user("outsider", None)


@pytest.fixture
def client_for() -> Callable[[User], Client]:
    """A test client logged in as the given user."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make
