"""Claiming: per-encounter order with many workers, lanes, triage, stale claims, the run_worker loop."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from connectors.hl7v2.reader import parse
from connectors.simulators import hl7_builder
from healthsync.choices import Lane, MessageStatus
from healthsync.models import CanonicalEvent, Message
from healthsync.pipeline import (
    business_key_for,
    claim_batch,
    lane_for,
    process_batch,
    process_pending,
    release_stale_claims,
    triage,
)
from healthsync.seed import seed_reference_config
from healthsync.selectors import lane_depths
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def seeded() -> None:
    seed_reference_config()


def test_the_business_key_is_the_encounter_then_the_patient() -> None:
    assert business_key_for(parse(hl7_builder.adt_a03(encounter_id="V77"))) == "V77"
    no_visit = hl7_builder.adt_a01(encounter_id="", mrn="MRN9")
    assert business_key_for(parse(no_visit)) == "patient:MRN9"
    assert business_key_for(object()) == ""


def test_triage_reads_the_key_and_splits_a_clinical_feed_by_message_type() -> None:
    assert triage(hl7_builder.adt_a01(encounter_id="V5").encode()) == ("V5", Lane.CLINICAL)
    assert triage(hl7_builder.dft_p03(encounter_id="V5").encode()) == ("V5", Lane.FINANCIAL)
    assert triage(hl7_builder.adt_a01().encode(), is_replay=True)[1] == Lane.BATCH
    # Unreadable bytes carry no key: nothing to order them by, and processing fails them with the reason.
    assert triage(b"\x00garbage", message_type="ADT^A01") == ("", Lane.CLINICAL)
    assert lane_for("ADT^A03", connector_lane=Lane.BATCH) == Lane.BATCH


def test_a_later_message_of_an_encounter_waits_while_another_worker_holds_an_earlier_one() -> None:
    admit = store(hl7_builder.adt_a01(encounter_id="V1"))
    discharge = store(hl7_builder.adt_a03(encounter_id="V1"))
    other = store(hl7_builder.adt_a01(encounter_id="V2"))

    assert claim_batch(1, worker="w1") == [admit.pk]
    # V1's discharge must not be applied before its admission: only the other encounter is claimable.
    assert claim_batch(5, worker="w2") == [other.pk]
    assert claim_batch(5, worker="w2") == []
    process_batch([admit.pk], worker="w1")
    assert claim_batch(5, worker="w2") == [discharge.pk]


def test_earlier_waiting_messages_of_a_key_are_claimed_with_it_and_processed_first() -> None:
    charges = store(hl7_builder.dft_p03(encounter_id="V1"))  # financial lane
    discharge = store(hl7_builder.adt_a03(encounter_id="V1"))  # clinical lane, claimed first

    assert claim_batch(5, lanes=[Lane.CLINICAL], worker="w1") == [charges.pk, discharge.pk]
    process_batch([discharge.pk, charges.pk], worker="w1")

    events = CanonicalEvent.objects.filter(subject="V1").order_by("recorded_at")
    assert [e.message_id for e in events] == [charges.pk, discharge.pk]


def test_clinical_messages_are_claimed_before_a_backlog_of_batch_work() -> None:
    backlog = [store(hl7_builder.adt_a01(encounter_id=f"B{i}")) for i in range(5)]
    Message.objects.filter(pk__in=[m.pk for m in backlog]).update(lane=Lane.BATCH, sequence_key=None)
    Message.objects.filter(pk__in=[m.pk for m in backlog]).update(replay_of=backlog[0])
    admission = store(hl7_builder.adt_a01(encounter_id="URGENT"))

    assert claim_batch(1, worker="w1") == [admission.pk]
    assert Message.objects.get(pk=backlog[1].pk).lane == Lane.BATCH


def test_a_worker_restricted_to_a_lane_claims_only_from_it() -> None:
    store(hl7_builder.adt_a01(encounter_id="V1"))
    charges = store(hl7_builder.dft_p03(encounter_id="V2"))
    assert claim_batch(5, lanes=[Lane.FINANCIAL], worker="w1") == [charges.pk]


def test_a_worker_leaves_a_message_whose_stale_claim_another_worker_took_over() -> None:
    from datetime import timedelta

    from django.utils import timezone

    message = store(hl7_builder.adt_a01(encounter_id="V1"))
    assert claim_batch(5, worker="slow") == [message.pk]
    Message.objects.filter(pk=message.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    assert release_stale_claims() == 1
    assert claim_batch(5, worker="fast") == [message.pk]

    process_batch([message.pk], worker="slow")  # the slow worker wakes up: not its message any more
    message.refresh_from_db()
    assert message.status == MessageStatus.PROCESSING
    process_batch([message.pk], worker="fast")
    message.refresh_from_db()
    assert (message.status, message.attempts) == (MessageStatus.PROCESSED, 1)
    assert CanonicalEvent.objects.count() == 1


def test_a_newly_activated_mapping_version_runs_from_the_next_batch() -> None:
    from healthsync.choices import VersionStatus
    from healthsync.models import MappingRule, MappingSet, MappingVersion

    store(hl7_builder.adt_a01(encounter_id="V1"))
    process_pending()
    mapping_set = MappingSet.objects.get(message_type="ADT^A01")
    old = mapping_set.active_version
    new = MappingVersion.objects.create(mapping_set=mapping_set, number=2, status=VersionStatus.ACTIVE)
    for rule in old.rules.all():
        MappingRule.objects.create(
            version=new,
            position=rule.position,
            target=rule.target,
            source=rule.source,
            transform=rule.transform,
            argument=rule.argument,
            required=rule.required,
        )
    mapping_set.active_version = new
    mapping_set.save()
    store(hl7_builder.adt_a01(encounter_id="V2"))
    process_pending()
    assert CanonicalEvent.objects.get(subject="V2").mapping_version == new


def test_lane_depths_show_each_lane_waiting_count_and_oldest_age() -> None:
    store(hl7_builder.adt_a01(encounter_id="V1"))
    store(hl7_builder.adt_a01(encounter_id="V2"))
    claim_batch(1, worker="w1")
    depths = {row["lane"]: row for row in lane_depths()}
    assert [row["lane"] for row in lane_depths()] == [Lane.CLINICAL, Lane.FINANCIAL, Lane.BATCH]
    assert depths[Lane.CLINICAL]["waiting"] == 1
    assert depths[Lane.CLINICAL]["processing"] == 1
    assert depths[Lane.CLINICAL]["oldest_age_seconds"] >= 0
    assert depths[Lane.BATCH]["waiting"] == 0 and depths[Lane.BATCH]["oldest_received_at"] is None


@pytest.mark.django_db(transaction=True)
def test_run_worker_once_drains_the_queue_and_exits() -> None:
    messages = [store(hl7_builder.adt_a01(encounter_id=f"V{i}")) for i in range(3)]
    call_command("run_worker", "--once", "--batch", "2")
    assert set(Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("status", flat=True)) == {
        MessageStatus.PROCESSED
    }


def test_run_worker_rejects_an_unknown_lane() -> None:
    with pytest.raises(CommandError, match="Unknown lane"):
        call_command("run_worker", "--once", "--lanes", "clinical,urgent")
