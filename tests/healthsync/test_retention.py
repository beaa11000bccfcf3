"""Retention: per-connector and per-status keep times, small-batch deletes, counted and logged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from healthsync.choices import ExceptionKind, ExceptionStatus, MessageStatus
from healthsync.models import (
    CanonicalEvent,
    Connector,
    ConnectorMetric,
    ExceptionItem,
    Message,
    PruneRun,
    RetentionPolicy,
)
from healthsync.retention import keep_days_for, prune
from healthsync.seed import seed_reference_config
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db


@pytest.fixture
def ehr() -> Connector:
    seed_reference_config()
    return Connector.objects.get(code="ehr-adt-mllp")


def _message(status: str, days_old: float, connector_code: str = "ehr-adt-mllp") -> Message:
    message = store(
        f"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{status}{days_old}|P|2.5.1\r", connector_code=connector_code
    )
    Message.objects.filter(pk=message.pk).update(
        status=status, received_at=timezone.now() - timedelta(days=days_old)
    )
    return message


def test_the_most_specific_policy_wins(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 30
    other = Connector.objects.exclude(pk=ehr.pk).first()
    policies = [
        RetentionPolicy(connector=None, status="", keep_days=20),
        RetentionPolicy(connector=None, status=MessageStatus.FAILED, keep_days=90),
        RetentionPolicy(connector=ehr, status="", keep_days=7),
        RetentionPolicy(connector=ehr, status=MessageStatus.FAILED, keep_days=180),
    ]
    assert keep_days_for(policies, ehr.pk, MessageStatus.FAILED) == 180
    assert keep_days_for(policies, ehr.pk, MessageStatus.PROCESSED) == 7
    assert keep_days_for(policies, other.pk, MessageStatus.FAILED) == 90
    assert keep_days_for(policies, other.pk, MessageStatus.PROCESSED) == 20
    assert keep_days_for([], other.pk, MessageStatus.PROCESSED) == 30


def test_it_prunes_every_finished_status_past_retention_but_never_the_queue(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 10
    old = [_message(status, 11) for status in ("processed", "ignored", "duplicate", "failed", "rejected")]
    waiting = [_message(MessageStatus.RECEIVED, 40), _message(MessageStatus.PROCESSING, 40)]
    young = _message(MessageStatus.FAILED, 9)

    run = prune(batch_size=2)
    assert run.messages_deleted == 5 and not run.dry_run
    assert not Message.objects.filter(pk__in=[m.pk for m in old]).exists()
    assert set(Message.objects.values_list("pk", flat=True)) == {m.pk for m in [*waiting, young]}
    assert run.counts["ehr-adt-mllp"] == {
        s: 1 for s in ("processed", "ignored", "duplicate", "failed", "rejected")
    }
    assert "ehr-adt-mllp/failed: 1 deleted (older than 10 days)" in run.log
    assert PruneRun.objects.get() == run and run.finished_at is not None


def test_a_message_with_an_open_exception_is_kept_until_it_is_closed(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 1
    failed = _message(MessageStatus.FAILED, 5)
    through_event = _message(MessageStatus.PROCESSED, 5)
    event = CanonicalEvent.objects.create(
        type="t", source="s", subject="V1", idempotency_key="k", message=through_event
    )
    item = ExceptionItem.objects.create(kind=ExceptionKind.MAPPING_FAILED, reason="r", message=failed)
    ExceptionItem.objects.create(kind=ExceptionKind.MISSING_DATA, reason="r", event=event)

    run = prune()
    assert run.messages_deleted == 0 and run.skipped_open_exceptions == 2
    ExceptionItem.objects.filter(pk=item.pk).update(status=ExceptionStatus.RESOLVED)
    run = prune()
    assert run.messages_deleted == 1
    item.refresh_from_db()
    assert item.message is None  # the exception's history stays, its link is cleared


def test_per_connector_and_status_policies_apply(ehr: Connector) -> None:
    RetentionPolicy.objects.create(connector=None, status="", keep_days=365)
    RetentionPolicy.objects.create(connector=ehr, status=MessageStatus.PROCESSED, keep_days=3)
    gone = _message(MessageStatus.PROCESSED, 4)
    kept = _message(MessageStatus.FAILED, 4)
    run = prune()
    assert run.messages_deleted == 1
    assert not Message.objects.filter(pk=gone.pk).exists() and Message.objects.filter(pk=kept.pk).exists()


def test_a_dry_run_counts_and_deletes_nothing(ehr: Connector, settings, capsys) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 1
    _message(MessageStatus.PROCESSED, 3)
    call_command("prune", "--dry-run")
    out = capsys.readouterr().out
    assert "1 message(s) would be deleted" in out
    assert Message.objects.count() == 1
    assert PruneRun.objects.get().dry_run
    call_command("prune")
    assert "1 message(s) deleted" in capsys.readouterr().out
    assert Message.objects.count() == 0


def test_replays_and_duplicates_of_a_pruned_message_keep_their_own_rows(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 10
    original = _message(MessageStatus.PROCESSED, 20)
    replay = _message(MessageStatus.PROCESSED, 2)
    Message.objects.filter(pk=replay.pk).update(replay_of=original)
    prune()
    replay.refresh_from_db()
    assert replay.replay_of is None


def test_old_metrics_are_pruned_too(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_METRIC_RETENTION_DAYS = 2
    now = timezone.now().replace(second=0, microsecond=0)
    ConnectorMetric.objects.create(connector=ehr, minute=now - timedelta(days=3))
    ConnectorMetric.objects.create(connector=ehr, minute=now)
    run = prune()
    assert run.counts["_tables"]["connector_metrics"] == 1
    assert ConnectorMetric.objects.count() == 1


def test_engineers_set_and_remove_retention_from_the_page(
    ehr: Connector, client_for, engineer, rcm_analyst, outsider
) -> None:
    from auditlog.models import LogEntry

    client = client_for(engineer)
    assert client.get("/ops/retention/").status_code == 200
    response = client.post("/ops/retention/", {"connector": ehr.pk, "status": "failed", "keep_days": 180})
    assert response.status_code == 302
    policy = RetentionPolicy.objects.get()
    assert (policy.connector, policy.status, policy.keep_days) == (ehr, "failed", 180)
    client.post("/ops/retention/", {"connector": ehr.pk, "status": "failed", "keep_days": 200})
    assert RetentionPolicy.objects.get().keep_days == 200  # the same setting changed, not a second one
    assert LogEntry.objects.get_for_object(policy).filter(actor=engineer).count() == 2
    bad = client.post("/ops/retention/", {"keep_days": 0})
    assert bad.status_code == 200 and "greater than or equal to 1" in bad.content.decode()
    client.post("/ops/retention/", {"delete": policy.pk})
    assert not RetentionPolicy.objects.exists()
    assert client_for(rcm_analyst).get("/ops/retention/").status_code == 403
    assert client_for(outsider).post("/ops/retention/", {"keep_days": 5}).status_code == 403
