"""The OpenAPI schema and its docs, served without any CDN."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_lists_the_v1_resources_and_their_problem_responses() -> None:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    schema = response.json()
    paths = schema["paths"]
    for path in (
        "/api/v1/messages/",
        "/api/v1/exceptions/{id}/retry/",
        "/api/v1/kpis/",
        "/api/v1/change-requests/",
    ):
        assert path in paths
    listing = paths["/api/v1/messages/"]["get"]
    assert "application/problem+json" in listing["responses"]["429"]["content"]
    assert {"apiClientToken": []} in listing["security"]


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_docs_load_their_assets_locally(url) -> None:
    page = Client().get(url).content.decode()

    assert "/static/drf_spectacular_sidecar/" in page
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()
