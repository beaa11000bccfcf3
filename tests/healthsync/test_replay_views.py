"""The operations pages: overview, job runs, replay forms; each guarded by its permission."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User

from connectors.simulators import hl7_builder
from healthsync.choices import JobRunStatus, MessageStatus, ReplayKind
from healthsync.models import Connector, Message, ReplayItem, ReplayRequest, SyncJobRun
from healthsync.telemetry import rollup
from tests.pipeline_support import commits, destinations, feed

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims() -> Iterator[tuple]:
    with destinations() as pair:
        yield pair


@pytest.mark.parametrize(
    "url",
    ["/ops/", "/ops/jobs/", "/ops/replay/", "/ops/messages/1/replay/", "/ops/replays/1/", "/ops/jobs/1/"],
)
def test_outsiders_and_executives_cannot_open_the_operations_pages(
    client_for, outsider: User, executive: User, url: str
) -> None:
    for user in (outsider, executive):
        assert client_for(user).get(url).status_code == 403


def test_anonymous_users_are_sent_to_sign_in(client) -> None:
    response = client.get("/ops/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_overview_shows_each_connector_with_its_breaker(sims: tuple, client_for, engineer: User) -> None:
    feed(hl7_builder.adt_a03())
    Connector.objects.filter(code="rcm-claims").update(consecutive_failures=7)
    rollup()
    response = client_for(engineer).get("/ops/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "ehr-adt-mllp" in body and "rcm-claims" in body and "breaker-closed" in body
    assert "Batch / replay" in body
    partial = client_for(engineer).get("/ops/", headers={"HX-Request": "true"})
    assert "<html" not in partial.content.decode() and 'id="ops-connectors"' in partial.content.decode()


def test_engineers_see_job_runs_and_their_tracebacks(client_for, engineer: User, rcm_analyst: User) -> None:
    run = SyncJobRun.objects.create(job="prune", status=JobRunStatus.ERRORED, traceback="Traceback: boom")
    client = client_for(engineer)
    assert "prune" in client.get("/ops/jobs/").content.decode()
    assert "Traceback: boom" in client.get(f"/ops/jobs/{run.pk}/").content.decode()
    assert client.get("/ops/jobs/?job=other").status_code == 200
    assert client_for(rcm_analyst).get("/ops/jobs/").status_code == 403


def test_the_message_page_offers_replay_only_to_those_allowed(
    sims: tuple, client_for, engineer: User
) -> None:
    (message,) = feed(hl7_builder.adt_a03())
    body = client_for(engineer).get(f"/messages/{message.pk}/").content.decode()
    assert f"/ops/messages/{message.pk}/replay/" in body


def test_an_engineer_replays_a_message_from_its_page(sims: tuple, client_for, engineer: User) -> None:
    (message,) = feed(hl7_builder.adt_a03())
    client = client_for(engineer)
    form = client.get(f"/ops/messages/{message.pk}/replay/")
    assert form.status_code == 200 and "MSH|" in form.content.decode()
    rcm = Connector.objects.get(code="rcm-claims")
    with commits():
        response = client.post(
            f"/ops/messages/{message.pk}/replay/",
            {"reason": "Check", "destinations": [rcm.pk], "edited_raw": message.raw_text.replace("\r", "\n")},
        )
    replay = ReplayRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/ops/replays/{replay.pk}/"
    assert replay.kind == ReplayKind.MESSAGE and list(replay.destinations.all()) == [rcm]
    detail = client.get(response["Location"]).content.decode()
    assert "Check" in detail and engineer.username in detail


def test_an_edited_replay_from_the_form_keeps_the_original(sims: tuple, client_for, engineer: User) -> None:
    (message,) = feed(hl7_builder.adt_a03())
    edited = hl7_builder.adt_a03(control_id="EDITED-1").replace("\r", "\n")
    response = client_for(engineer).post(
        f"/ops/messages/{message.pk}/replay/", {"reason": "Fix", "edited_raw": edited}
    )
    assert response.status_code == 302
    item = ReplayItem.objects.get()
    assert item.edited and item.replay.control_id == "EDITED-1"
    assert bytes(Message.objects.get(pk=message.pk).raw) == bytes(message.raw)


def test_the_replay_form_shows_errors_and_keeps_the_input(sims: tuple, client_for, engineer: User) -> None:
    (message,) = feed(hl7_builder.adt_a03())
    response = client_for(engineer).post(
        f"/ops/messages/{message.pk}/replay/", {"reason": "Fix", "edited_raw": "garbage in"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "cannot be read" in body and "garbage in" in body
    missing = client_for(engineer).post(f"/ops/messages/{message.pk}/replay/", {"reason": ""})
    assert missing.status_code == 200 and "This field is required" in missing.content.decode()
    assert not ReplayRequest.objects.exists()


def test_a_filtered_replay_previews_then_replays(sims: tuple, client_for, engineer: User) -> None:
    feed(hl7_builder.adt_a01(), hl7_builder.adt_a03(), hl7_builder.adt_a03())
    client = client_for(engineer)
    preview = client.get("/ops/replay/", {"type": "ADT^A03", "status": MessageStatus.PROCESSED})
    assert "<strong>2</strong> messages match" in preview.content.decode()
    with commits():
        response = client.post("/ops/replay/", {"type": "ADT^A03", "reason": "Mapping v3 check"})
    assert response.status_code == 302
    replay = ReplayRequest.objects.get()
    assert replay.kind == ReplayKind.FILTERED and replay.message_count == 2
    assert replay.criteria["type"] == "ADT^A03"
    refused = client.post("/ops/replay/", {"type": "ADT^A03", "reason": ""})
    assert "Say why" in refused.content.decode()
    bad = client.get("/ops/replay/", {"received_from": "2026-02-01T00:00", "received_to": "2026-01-01T00:00"})
    assert "ends before it starts" in bad.content.decode()


def test_replay_needs_the_replay_permission(sims: tuple, client_for, rcm_analyst: User) -> None:
    (message,) = feed(hl7_builder.adt_a03())
    assert (
        client_for(rcm_analyst).post(f"/ops/messages/{message.pk}/replay/", {"reason": "x"}).status_code
        == 403
    )
    assert client_for(rcm_analyst).post("/ops/replay/", {"reason": "x"}).status_code == 403
    assert not ReplayRequest.objects.exists()
