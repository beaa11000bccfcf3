"""Standard transactions whose adapter reads the events out (X12 835/277CA/999) go through the pipeline."""

from __future__ import annotations

import pytest

from connectors.x12.payer import build_835
from healthsync.choices import Direction, ExceptionKind, MessageStatus, Protocol
from healthsync.models import CanonicalEvent, Connector, ExceptionItem, System
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config
from tests.connectors.test_x12 import REMIT
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db


@pytest.fixture
def remits() -> Connector:
    seed_reference_config()
    return Connector.objects.create(
        system=System.objects.get(code="rcm-main"),
        code="rcm-remits",
        name="RCM remittances",
        direction=Direction.INBOUND,
        protocol=Protocol.X12,
        config={},
    )


def test_an_835_becomes_a_remittance_and_one_validated_event_per_claim(remits: Connector) -> None:
    message = store(build_835(REMIT, control_number=9, trace="TRC42"), connector_code="rcm-remits")

    process_pending()

    message.refresh_from_db()
    assert message.status == MessageStatus.PROCESSED
    events = CanonicalEvent.objects.filter(message=message)
    assert sorted(events.values_list("type", flat=True)) == sorted(
        ["remittance.received", "claim.paid", "claim.denied", "claim.denied", "claim.reversed", "claim.paid"]
    )
    paid = events.get(type="claim.paid", subject="ENC1")
    assert paid.data["paid_amount"] == "800"
    assert paid.schema_version is not None and paid.schema_version.event_type == "claim.paid"
    assert paid.source == "rcm-main"


def test_the_same_835_received_twice_emits_nothing_new(remits: Connector) -> None:
    text = build_835(REMIT, control_number=9, trace="TRC42")
    store(text, connector_code="rcm-remits")
    process_pending()
    count = CanonicalEvent.objects.count()

    second = store(text, connector_code="rcm-remits")
    process_pending()

    second.refresh_from_db()
    assert second.status == MessageStatus.PROCESSED
    assert CanonicalEvent.objects.count() == count


def test_an_unreadable_interchange_fails_with_a_reason_and_keeps_the_raw_bytes(remits: Connector) -> None:
    message = store(b"ISA*00*garbage~", connector_code="rcm-remits", message_type="835")

    process_pending()

    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert bytes(message.raw) == b"ISA*00*garbage~"
    item = ExceptionItem.objects.get(message=message)
    assert item.kind == ExceptionKind.MAPPING_FAILED
    assert "could not be read" in item.reason or "carries no events" in item.reason
