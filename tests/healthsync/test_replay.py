"""Replay: audited, to chosen destinations, keeping the original, and never a second downstream effect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from connectors.simulators import hl7_builder
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync.choices import DeliveryStatus, Lane, MessageStatus, ReplayKind
from healthsync.deliveries import deliver_due
from healthsync.models import (
    CanonicalEvent,
    Connector,
    Delivery,
    ExceptionItem,
    Message,
    ReplayItem,
    ReplayRequest,
)
from healthsync.pipeline import process_pending
from healthsync.replay import (
    exception_replay,
    message_edit_and_replay,
    message_filter,
    message_replay,
)
from tests.pipeline_support import commits, destinations, feed, store

pytestmark = pytest.mark.django_db

# 1,000 messages: per encounter an admission, 98 charge batches and a discharge (one claim, one accrual each),
# so that the drill measures replay at volume without waiting on 1,000 HTTP round trips to set it up.
ENCOUNTERS = int(os.getenv("REPLAY_ENCOUNTERS", "10"))
PER_ENCOUNTER = 100


@pytest.fixture
def sims() -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    with destinations() as pair:
        yield pair


def _drain() -> None:
    """Run the worker and the delivery schedule until nothing is left, as the cluster would."""
    for _ in range(5):
        with commits():
            handled = process_pending()
        with commits():
            sent = deliver_due(limit=5000)
        if not handled and not sent:
            return


def _encounter(n: int) -> list[str]:
    fields = {"encounter_id": f"V{n:05d}", "account_number": f"A{n:05d}"}
    return [hl7_builder.dft_p03(**fields), hl7_builder.adt_a03(**fields)]


def _counts(rcm: RcmSimulator, erp: ErpSimulator) -> tuple[int, int, int, int]:
    return (
        rcm.requests["POST /claims"],
        erp.requests["POST /journal-entries"],
        rcm.claim_count,
        erp.entry_count,
    )


@pytest.mark.slow
def test_a_replay_of_1000_delivered_messages_creates_no_new_downstream_effect(
    sims: tuple[RcmSimulator, ErpSimulator], engineer: User
) -> None:
    rcm, erp = sims
    for n in range(ENCOUNTERS):
        fields = {"encounter_id": f"V{n:05d}", "account_number": f"A{n:05d}"}
        store(hl7_builder.adt_a01(**fields))
        for _ in range(PER_ENCOUNTER - 2):
            store(hl7_builder.dft_p03(**fields))
        store(hl7_builder.adt_a03(**fields))
    _drain()
    total = ENCOUNTERS * PER_ENCOUNTER
    assert Message.objects.filter(status=MessageStatus.PROCESSED).count() == total
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SUCCEEDED}
    before = _counts(rcm, erp)
    assert before == (ENCOUNTERS,) * 4
    events, deliveries = CanonicalEvent.objects.count(), Delivery.objects.count()

    with commits():
        request = message_replay(
            messages=Message.objects.all(), destinations=None, reason="Drill: full replay", actor=engineer
        )
    _drain()

    assert request.message_count == total and request.deliveries_unchanged == 2 * ENCOUNTERS
    assert request.deliveries_resent == 0
    replays = Message.objects.exclude(replay_of=None)
    assert replays.count() == total
    # Mapping ran again for every copy, and every copy found its event already emitted.
    assert set(replays.values_list("status", flat=True)) == {MessageStatus.PROCESSED}
    assert set(replays.values_list("lane", flat=True)) == {Lane.BATCH}
    assert _counts(rcm, erp) == before
    assert CanonicalEvent.objects.count() == events and Delivery.objects.count() == deliveries


def test_a_replay_keeps_the_original_and_records_who_why_and_what(sims: tuple, engineer: User) -> None:
    (original,) = feed(hl7_builder.adt_a03())
    raw = bytes(original.raw)
    with commits():
        request = message_replay(
            messages=[original], destinations=None, reason="  Checking mapping v2  ", actor=engineer
        )
    original.refresh_from_db()
    assert bytes(original.raw) == raw and original.status == MessageStatus.PROCESSED
    item = ReplayItem.objects.get(request=request)
    assert item.original == original and item.original_number == original.pk
    copy = item.replay
    assert copy.replay_of == original and bytes(copy.raw) == raw and copy.dedupe_key is None
    assert request.reason == "Checking mapping v2"
    assert request.actor == engineer and request.actor_username == engineer.username
    assert request.kind == ReplayKind.MESSAGE and request.criteria["message_ids"] == [original.pk]


def test_a_replay_to_chosen_destinations_leaves_the_others_alone(
    sims: tuple[RcmSimulator, ErpSimulator], engineer: User
) -> None:
    rcm, erp = sims
    rcm.forced_status = 422  # the RCM rejects the claim: a failed delivery with an exception
    messages = feed(*_encounter(1))
    _drain()
    claim = Delivery.objects.get(operation="submit_claim")
    assert claim.status == DeliveryStatus.FAILED
    rcm.forced_status = None
    claims_before = rcm.requests["POST /claims"]

    erp_only = [Connector.objects.get(code="erp-journals")]
    with commits():
        request = message_replay(messages=messages, destinations=erp_only, reason="ERP only", actor=engineer)
    _drain()
    claim.refresh_from_db()
    assert claim.status == DeliveryStatus.FAILED and request.deliveries_resent == 0
    assert rcm.requests["POST /claims"] == claims_before
    assert list(request.destinations.all()) == erp_only

    rcm_only = [Connector.objects.get(code="rcm-claims")]
    with commits():
        request = message_replay(messages=messages, destinations=rcm_only, reason="RCM fixed", actor=engineer)
    _drain()
    claim.refresh_from_db()
    assert request.deliveries_resent == 1
    assert claim.status == DeliveryStatus.SUCCEEDED
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert not ExceptionItem.objects.open().exists()


def test_a_replay_from_an_exception_replays_its_source_message(
    sims: tuple[RcmSimulator, ErpSimulator], engineer: User
) -> None:
    rcm, _ = sims
    rcm.forced_status = 422
    feed(hl7_builder.adt_a03())
    _drain()
    exception = ExceptionItem.objects.get(delivery__isnull=False)
    rcm.forced_status = None
    with commits():
        request = exception_replay(exception=exception, destinations=None, reason="RCM fixed", actor=engineer)
    _drain()
    assert request.kind == ReplayKind.EXCEPTION and request.exception == exception
    assert request.message_count == 1 and request.deliveries_resent == 1
    assert rcm.claim_count == 1
    exception.refresh_from_db()
    assert not exception.is_open


def test_edit_and_replay_runs_the_edited_copy_and_keeps_the_original(
    sims: tuple[RcmSimulator, ErpSimulator], engineer: User
) -> None:
    rcm, _ = sims
    broken = hl7_builder.adt_a03(control_id="CTRL-EDIT-1").replace("PV1|", "PVX|")
    (original,) = feed(broken)
    assert original.status == MessageStatus.FAILED
    fixed = hl7_builder.adt_a03(control_id="CTRL-EDIT-1")

    with commits():
        request = message_edit_and_replay(
            message=original, raw=fixed.encode(), reason="Restored PV1", actor=engineer
        )
    _drain()
    original.refresh_from_db()
    assert bytes(original.raw) == broken.encode() and original.status == MessageStatus.FAILED
    copy = ReplayItem.objects.get(request=request).replay
    assert copy.status == MessageStatus.PROCESSED and copy.control_id == "CTRL-EDIT-1"
    assert request.kind == ReplayKind.EDIT and ReplayItem.objects.get(request=request).edited
    assert rcm.claim_count == 1

    # Editing and replaying again cannot bill twice: the workflow's claim key is per encounter.
    with commits():
        message_edit_and_replay(message=original, raw=fixed.encode(), reason="Again", actor=engineer)
    _drain()
    assert rcm.claim_count == 1 and rcm.requests["POST /claims"] == 1


def test_edit_and_replay_rejects_bytes_that_cannot_be_read_and_stores_nothing(
    sims: tuple, engineer: User
) -> None:
    (original,) = feed(hl7_builder.adt_a03())
    count = Message.objects.count()
    with pytest.raises(ValidationError, match="cannot be read"):
        message_edit_and_replay(message=original, raw=b"not hl7 at all", reason="x", actor=engineer)
    with pytest.raises(ValidationError, match="empty"):
        message_edit_and_replay(message=original, raw=b"  \r\n", reason="x", actor=engineer)
    assert Message.objects.count() == count and not ReplayRequest.objects.exists()


def test_it_refuses_a_replay_without_permission_or_reason(
    sims: tuple, engineer: User, rcm_analyst: User
) -> None:
    (original,) = feed(hl7_builder.adt_a03())
    with pytest.raises(PermissionDenied):
        message_replay(messages=[original], destinations=None, reason="why", actor=rcm_analyst)
    with pytest.raises(ValidationError, match="Say why"):
        message_replay(messages=[original], destinations=None, reason="   ", actor=engineer)
    assert not ReplayRequest.objects.exists()


def test_it_refuses_an_inbound_connector_as_a_destination(sims: tuple, engineer: User) -> None:
    (original,) = feed(hl7_builder.adt_a03())
    inbound = Connector.objects.get(code="ehr-adt-mllp")
    with pytest.raises(ValidationError, match="not destinations: ehr-adt-mllp"):
        message_replay(messages=[original], destinations=[inbound], reason="x", actor=engineer)


def test_it_refuses_an_empty_or_oversized_selection(sims: tuple, engineer: User, settings) -> None:
    feed(hl7_builder.adt_a03(), hl7_builder.adt_a01(), hl7_builder.dft_p03())
    with pytest.raises(ValidationError, match="nothing to replay"):
        message_replay(messages=Message.objects.none(), destinations=None, reason="x", actor=engineer)
    settings.HEALTHSYNC_REPLAY_MAX = 2
    with pytest.raises(ValidationError, match="More than 2 messages"):
        message_replay(messages=Message.objects.all(), destinations=None, reason="x", actor=engineer)


def test_messages_still_in_the_queue_are_left_out_of_a_replay(sims: tuple, engineer: User) -> None:
    (done,) = feed(hl7_builder.adt_a03())
    waiting = store(hl7_builder.adt_a01())
    request = message_replay(messages=[done, waiting], destinations=None, reason="x", actor=engineer)
    assert request.message_count == 1 and request.criteria["skipped_in_flight"] == 1


def test_the_replay_filter_selects_by_connector_type_status_and_time(sims: tuple) -> None:
    a01, a03 = feed(hl7_builder.adt_a01(), hl7_builder.adt_a03())
    bad = feed("garbage")[0]
    connector = Connector.objects.get(code="ehr-adt-mllp")
    assert list(message_filter(connector=connector, message_type="adt^a03")) == [a03]
    assert list(message_filter(status=MessageStatus.FAILED)) == [bad]
    Message.objects.filter(pk=a01.pk).update(received_at=timezone.now() - timedelta(days=3))
    recent = message_filter(received_from=timezone.now() - timedelta(days=1))
    assert a01 not in recent and a03 in recent
    old = message_filter(received_to=timezone.now() - timedelta(days=1))
    assert list(old) == [a01]
