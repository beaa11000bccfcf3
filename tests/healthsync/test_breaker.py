"""The circuit breaker: a destination that keeps failing is paused, probed once, and resumed by itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from connectors.simulators import hl7_builder
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync.choices import DeliveryStatus
from healthsync.deliveries import breaker_gate, breaker_pause, deliver_due
from healthsync.models import Connector, Delivery, ExceptionItem
from tests.pipeline_support import commits, destinations, feed, tasks_inline

pytestmark = pytest.mark.django_db

ENCOUNTERS = [f"V2{n:03d}" for n in range(6)]


@pytest.fixture
def sims() -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    with destinations(retry_max_attempts=10) as pair, tasks_inline():
        Connector.objects.filter(code="rcm-claims").update(breaker_threshold=3)
        yield pair


def _time_passes() -> None:
    """Instead of sleeping: the breaker's pause and every retry wait are over."""
    past = timezone.now() - timedelta(seconds=1)
    Connector.objects.exclude(breaker_open_until=None).update(breaker_open_until=past)
    Delivery.objects.exclude(next_attempt_at=None).update(next_attempt_at=past)


def _discharges() -> None:
    raws = []
    for encounter in ENCOUNTERS:
        fields = {"encounter_id": encounter, "account_number": f"A{encounter}"}
        raws += [hl7_builder.dft_p03(**fields), hl7_builder.adt_a03(**fields)]
    feed(*raws)


def _restart_on_same_port(sim: RcmSimulator, port: int) -> None:
    sim._requested_port = port
    sim.start()


@pytest.mark.parametrize("outage", ["503", "stopped"])
def test_a_destination_down_for_a_while_gets_everything_exactly_once_after_it_comes_back(
    sims: tuple[RcmSimulator, ErpSimulator], outage: str
) -> None:
    rcm, erp = sims
    port = rcm.port
    if outage == "503":
        rcm.forced_status = 503
    else:
        rcm.stop()

    _discharges()
    connector = Connector.objects.get(code="rcm-claims")
    # Three failures open the breaker; the other claims wait for it without spending attempts.
    assert connector.breaker_state == "open"
    assert connector.breaker_trips == 1 and connector.breaker_opened_at is not None
    claims = Delivery.objects.filter(operation="submit_claim")
    assert claims.count() == len(ENCOUNTERS)
    assert set(claims.values_list("status", flat=True)) == {DeliveryStatus.RETRYING}
    assert sorted(claims.values_list("attempts", flat=True)) == [0, 0, 0, 1, 1, 1]
    if outage == "503":
        assert rcm.requests["POST /claims"] == 3

    # Still down after the pause: one probe goes out, fails, and the breaker opens for longer.
    _time_passes()
    with commits():
        deliver_due()
    connector.refresh_from_db()
    assert connector.breaker_state == "open"
    assert connector.consecutive_failures == 4
    assert connector.breaker_trips == 1  # the same outage, not a new trip
    if outage == "503":
        assert rcm.requests["POST /claims"] == 4
    assert sum(claims.values_list("attempts", flat=True)) == 4

    # Back up: the probe succeeds, the breaker closes and every claim and accrual goes out once.
    if outage == "503":
        rcm.forced_status = None
    else:
        _restart_on_same_port(rcm, port)
    _time_passes()
    with commits():
        deliver_due()
    with commits():
        deliver_due()  # the accruals the claims led to, if any were left waiting
    connector.refresh_from_db()
    assert connector.breaker_state == "closed" and connector.consecutive_failures == 0
    assert connector.breaker_opened_at is None
    assert set(claims.values_list("status", flat=True)) == {DeliveryStatus.SUCCEEDED}
    assert rcm.claim_count == len(ENCOUNTERS)
    assert sorted(c["claim"]["patient_control_number"] for c in rcm.claims.values()) == ENCOUNTERS
    assert erp.entry_count == len(ENCOUNTERS)
    assert not ExceptionItem.objects.open().exists()

    # Nothing left to send: the schedule running again changes nothing downstream.
    before = (rcm.requests["POST /claims"], erp.requests["POST /journal-entries"])
    with commits():
        assert deliver_due() == 0
    assert (rcm.requests["POST /claims"], erp.requests["POST /journal-entries"]) == before


def test_only_one_sender_probes_a_half_open_breaker(sims: tuple) -> None:
    connector = Connector.objects.get(code="rcm-claims")
    Connector.objects.filter(pk=connector.pk).update(
        breaker_open_until=timezone.now() - timedelta(seconds=1), consecutive_failures=3
    )
    first, second = Connector.objects.get(pk=connector.pk), Connector.objects.get(pk=connector.pk)
    # Two workers read the same half-open state; the conditional UPDATE lets only the first through.
    assert breaker_gate(first) is None
    waited = breaker_gate(second)
    assert waited is not None and waited > timezone.now()


def test_a_closed_breaker_lets_every_send_through(sims: tuple) -> None:
    assert breaker_gate(Connector.objects.get(code="rcm-claims")) is None


def test_the_pause_grows_with_the_failures_within_bounds(sims: tuple) -> None:
    connector = Connector.objects.get(code="rcm-claims")
    connector.retry_backoff_seconds = 2
    short, longer = breaker_pause(connector, 3), breaker_pause(connector, 6)
    assert short.total_seconds() == 30
    assert longer > short
    assert breaker_pause(connector, 100).total_seconds() == 600
