"""Schemathesis against the live OpenAPI schema: no server errors, every response as documented.

Runs in-process through the WSGI app as an integration engineer's API client (broad read access), a few
examples per operation so the whole API is covered in about a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.console_data import billed_run, days_ago, exception_item, message

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def api_token(engineer: Any, issue_token: Any) -> str:
    _, token = issue_token(engineer, rate_limit=100_000)
    return token


@pytest.fixture
def _keep_connection() -> Iterator[None]:
    # Django's own test client does this too: closing the connection after each request would end the test's
    # transaction, and with it the data the test set up.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_data(db: None, _keep_connection: None) -> None:
    # A little of everything, so detail endpoints also answer 200 for the low ids schemathesis tries.
    stored = message()
    billed_run("ENC1001", days_ago(3), 40)
    exception_item(message=stored)


# Loaded from the running app itself: generating the schema needs no database.
# The coverage phase enumerates every boundary of every parameter, unbounded by max_examples: it is left to
# a manual `schemathesis run` so that this test stays about a minute long.
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application(), config=CONFIG)


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_keeps_to_its_schema(case: Any, api_token: str, api_data: None) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {api_token}"}, checks=CHECKS)
