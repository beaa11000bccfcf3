"""Every API error is an RFC 9457 problem: type, title, status, detail, and field errors when there are some."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError

from healthsync.api.problems import problem_exception_handler
from tests.console_data import exception_item

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def _is_problem(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


def test_an_unknown_path_under_api_is_a_problem(engineer, api_for) -> None:
    body = _is_problem(api_for(engineer).get("/api/v2/systems/"), 404)
    assert body["type"] == "/api/problems/not-found"


def test_a_missing_object_is_a_problem(engineer, api_for) -> None:
    body = _is_problem(api_for(engineer).get("/api/v1/messages/424242/"), 404)
    assert body["title"] == "Not Found"


def test_a_bad_filter_value_names_the_field(engineer, api_for) -> None:
    response = api_for(engineer).get("/api/v1/messages/?received_after=yesterday&status=lost")

    body = _is_problem(response, 400)
    assert body["type"] == "/api/problems/validation-error"
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"received_after", "status"}
    assert all(error["detail"] for error in body["errors"])


def test_a_missing_body_field_names_the_field(rcm_analyst, api_for) -> None:
    item = exception_item()

    response = api_for(rcm_analyst).post(f"/api/v1/exceptions/{item.pk}/resolve/", {}, format="json")

    body = _is_problem(response, 400)
    assert body["errors"] == [{"field": "note", "code": "required", "detail": "This field is required."}]


def test_a_broken_business_rule_from_a_service_is_a_400(rcm_analyst, api_for) -> None:
    item = exception_item(status="resolved")

    response = api_for(rcm_analyst).post(
        f"/api/v1/exceptions/{item.pk}/resolve/", {"note": "again"}, format="json"
    )

    body = _is_problem(response, 400)
    assert body["detail"] == "This exception is already resolved."


def test_a_wrong_method_is_a_problem(engineer, api_for) -> None:
    body = _is_problem(api_for(engineer).delete("/api/v1/systems/"), 405)
    assert body["title"] == "Method Not Allowed"


def test_malformed_json_is_a_problem(rcm_analyst, api_for) -> None:
    item = exception_item()

    response = api_for(rcm_analyst).post(
        f"/api/v1/exceptions/{item.pk}/resolve/", "{not json", content_type="application/json"
    )

    body = _is_problem(response, 400)
    assert "JSON parse error" in body["detail"]


def test_an_unexpected_error_becomes_a_logged_500_problem(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="healthsync.api.problems"):
        response = problem_exception_handler(RuntimeError("boom"), {"view": None})

    assert response.status_code == 500
    assert response.content_type == PROBLEM
    assert response.data["type"] == "/api/problems/server-error"
    assert "boom" not in response.data["detail"]
    assert "API error" in caplog.text


def test_a_django_validation_error_keeps_its_field_errors() -> None:
    response = problem_exception_handler(DjangoValidationError({"rate_limit_per_minute": "Too high."}), {})

    assert response.status_code == 400
    assert response.data["errors"] == [
        {"field": "rate_limit_per_minute", "code": "invalid", "detail": "Too high."}
    ]


def test_a_date_time_with_an_offset_postgresql_refuses_is_normalised_to_utc(engineer, api_for) -> None:
    # Found by schemathesis: PostgreSQL rejects offsets beyond ±15:59 that RFC 3339 allows.
    response = api_for(engineer).get("/api/v1/events/", {"recorded_after": "0301-10-30T05:05:56.38+18:08"})

    assert response.status_code == 200


def test_a_date_time_that_overflows_in_utc_is_a_400(engineer, api_for) -> None:
    response = api_for(engineer).get("/api/v1/messages/", {"received_after": "0001-01-01T00:00:00+05:00"})

    body = _is_problem(response, 400)
    assert body["errors"][0]["field"] == "received_after"
