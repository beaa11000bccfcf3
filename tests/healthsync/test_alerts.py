"""Operations alerts: quiet connectors and deep or growing queues, raised, acknowledged and cleared."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from healthsync.alerts import AlertConfigError, alert_acknowledge, alert_thresholds, alerts_evaluate
from healthsync.choices import AlertKind, AlertState, JobRunStatus, MessageStatus
from healthsync.jobs import job_run
from healthsync.models import Connector, ConnectorAlert, ConnectorMetric, Message, SyncJobRun
from healthsync.seed import seed_reference_config
from healthsync.telemetry import minute_of, rollup
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db

NOW = timezone.make_aware(datetime(2026, 3, 2, 10, 30, 20))  # a Monday, mid-morning local time


@pytest.fixture
def ehr() -> Connector:
    seed_reference_config()
    # Only the connector under test is watched: the others would raise "quiet" alerts of their own.
    Connector.objects.exclude(code="ehr-adt-mllp").update(is_enabled=False)
    connector = Connector.objects.get(code="ehr-adt-mllp")
    Connector.objects.filter(pk=connector.pk).update(created_at=NOW - timedelta(days=1))
    connector.refresh_from_db()
    return connector


def _set_alerts(connector: Connector, **alerts: object) -> None:
    connector.config = {**connector.config, "alerts": alerts}
    connector.save(update_fields=["config"])


def _received(at: datetime, status: str = MessageStatus.PROCESSED) -> Message:
    message = store("MSH|^~\\&|A|B|C|D|20260101||ADT^A03|X|P|2.5.1\r")
    Message.objects.filter(pk=message.pk).update(received_at=at, status=status)
    return message


def _alerts(kind: str) -> list[ConnectorAlert]:
    return list(ConnectorAlert.objects.filter(kind=kind).order_by("id"))


def test_a_quiet_connector_raises_once_and_clears_when_traffic_returns(
    ehr: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    _set_alerts(ehr, quiet_minutes=15, queue_depth=0, growth_minutes=0)
    _received(NOW - timedelta(minutes=20))
    with caplog.at_level(logging.INFO, logger="healthsync.alerts"):
        assert alerts_evaluate(now=NOW)["raised"] == 1
        assert alerts_evaluate(now=NOW + timedelta(minutes=1))["raised"] == 0  # one open alert, refreshed
    (alert,) = _alerts(AlertKind.QUIET)
    assert (
        alert.state == AlertState.RAISED and alert.threshold == 15 and alert.value == pytest.approx(21.3, 0.1)
    )
    assert "ops alert raised: connector=ehr-adt-mllp kind=quiet" in caplog.text

    _received(NOW + timedelta(minutes=2))
    with caplog.at_level(logging.INFO, logger="healthsync.alerts"):
        result = alerts_evaluate(now=NOW + timedelta(minutes=3))
    alert.refresh_from_db()
    assert result["cleared"] == 1 and result["open"] == 0
    assert alert.state == AlertState.CLEARED and alert.cleared_at == NOW + timedelta(minutes=3)
    assert "ops alert cleared: connector=ehr-adt-mllp kind=quiet" in caplog.text


def test_quiet_is_only_checked_in_the_expected_hours(ehr: Connector) -> None:
    local_hour = timezone.localtime(NOW).hour
    _set_alerts(ehr, quiet_minutes=15, hours=[(local_hour + 1) % 24, (local_hour + 8) % 24])
    assert alerts_evaluate(now=NOW)["raised"] == 0
    _set_alerts(ehr, quiet_minutes=15, hours=[local_hour, (local_hour + 1) % 24])
    assert alerts_evaluate(now=NOW)["raised"] == 1


def test_a_queue_above_its_threshold_raises_and_clears(ehr: Connector) -> None:
    _set_alerts(ehr, quiet_minutes=0, queue_depth=3, growth_minutes=0)
    waiting = [_received(NOW - timedelta(seconds=n), MessageStatus.RECEIVED) for n in range(4)]
    alerts_evaluate(now=NOW)
    (alert,) = _alerts(AlertKind.QUEUE_DEPTH)
    assert alert.value == 4 and alert.threshold == 3 and "Queue depth 4 above 3" in alert.message

    Message.objects.filter(pk=waiting[0].pk).update(status=MessageStatus.PROCESSED)
    alerts_evaluate(now=NOW + timedelta(minutes=1))
    alert.refresh_from_db()
    assert alert.state == AlertState.CLEARED


def test_a_queue_growing_for_n_minutes_raises_from_the_rolled_up_history(ehr: Connector) -> None:
    _set_alerts(ehr, quiet_minutes=0, queue_depth=0, growth_minutes=3)
    start = minute_of(NOW)
    # Three minutes of rollups while the queue grows 1 → 2 → 3, then 4 waiting now.
    for n in range(3):
        _received(start - timedelta(minutes=3 - n), MessageStatus.RECEIVED)
        rollup(now=start - timedelta(minutes=3 - n) + timedelta(seconds=30))
    _received(NOW, MessageStatus.RECEIVED)
    # Re-rolling earlier minutes keeps their snapshot: the history the growth check reads survives.
    rollup(now=NOW)
    depths = list(
        ConnectorMetric.objects.filter(connector=ehr).order_by("minute").values_list("queue_depth", flat=True)
    )
    assert depths == [1, 2, 3, 4]
    alerts_evaluate(now=NOW)
    (alert,) = _alerts(AlertKind.QUEUE_GROWING)
    assert "grew from 1 to 4 over 3 min" in alert.message

    # A minute later the queue stands still at 4: no longer growing, the alert clears.
    alerts_evaluate(now=NOW + timedelta(minutes=1))
    alert.refresh_from_db()
    assert alert.state == AlertState.CLEARED


def test_thresholds_come_from_the_connector_over_the_settings(ehr: Connector, settings: object) -> None:
    settings.HEALTHSYNC_ALERT_QUIET_MINUTES = 45  # type: ignore[attr-defined]
    assert alert_thresholds(ehr).quiet_minutes == 45
    _set_alerts(ehr, quiet_minutes=5, hours=[22, 6])
    limits = alert_thresholds(ehr)
    assert limits.quiet_minutes == 5 and limits.hours == (22, 6)
    for bad, error in (
        ({"quiet_minutes": -1}, 'alerts["quiet_minutes"] must be a whole number'),
        ({"queue_depth": "lots"}, 'alerts["queue_depth"] must be a whole number'),
        ({"hours": [9]}, 'alerts["hours"] must be [start, end]'),
        ({"quite_minutes": 5}, "unknown alert setting(s): quite_minutes"),
    ):
        _set_alerts(ehr, **bad)
        with pytest.raises(AlertConfigError, match=re.escape(error)):
            alert_thresholds(ehr)


def test_the_job_records_its_counts_and_fails_on_unreadable_thresholds(ehr: Connector) -> None:
    _set_alerts(ehr, quiet_minutes=1)
    run = SyncJobRun.objects.get(pk=job_run("ops-alerts"))
    assert run.status == JobRunStatus.COMPLETED and run.counts["raised"] == 1 and run.counts["open"] == 1
    _set_alerts(ehr, quiet_minutes="x")
    run = SyncJobRun.objects.get(pk=job_run("ops-alerts"))
    assert run.status == JobRunStatus.FAILED and "ehr-adt-mllp" in run.log
    # Unreadable thresholds leave the open alert alone rather than clearing it on a guess.
    assert ConnectorAlert.objects.get().state == AlertState.RAISED


def test_acknowledging_keeps_the_alert_open_until_it_clears(ehr: Connector, engineer: User) -> None:
    _set_alerts(ehr, quiet_minutes=1)
    alerts_evaluate(now=NOW)
    alert = ConnectorAlert.objects.get()
    assert alert_acknowledge(alert=alert, actor=engineer)
    assert not alert_acknowledge(alert=alert, actor=engineer)
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == engineer
    assert alerts_evaluate(now=NOW + timedelta(minutes=1)) == {
        "raised": 0,
        "cleared": 0,
        "open": 1,
        "bad_config": {},
    }


def test_the_ops_page_the_header_badge_and_the_api_show_alerts(
    ehr: Connector, engineer: User, executive: User, client_for: Callable[[User], Client]
) -> None:
    _set_alerts(ehr, quiet_minutes=1)
    alerts_evaluate()
    alert = ConnectorAlert.objects.get()
    client = client_for(engineer)
    page = client.get("/ops/").content.decode()
    assert (
        "Open alerts" in page and "Connector quiet" in page and f"/ops/alerts/{alert.pk}/acknowledge/" in page
    )
    assert 'hx-get="/ops/alerts/badge/"' in client.get("/dashboard/").content.decode()
    assert "1 alert" in client.get("/ops/alerts/badge/").content.decode()

    response = client.post(f"/ops/alerts/{alert.pk}/acknowledge/", {"next": "/ops/"})
    assert response.status_code == 302 and response["Location"] == "/ops/"
    response = client.post(f"/ops/alerts/{alert.pk}/acknowledge/", {"next": "https://evil.example/"})
    assert response["Location"] == "/ops/alerts/"

    body = client.get("/api/v1/ops-alerts/", {"state": "acknowledged"}).json()
    assert body["count"] == 1 and body["results"][0]["connector_code"] == "ehr-adt-mllp"
    assert body["results"][0]["acknowledged_by"] == engineer.pk

    # Executives see the alerts (the header badge, the list) but may not acknowledge them.
    viewer = client_for(executive)
    assert "Connector quiet" in viewer.get("/ops/alerts/").content.decode()
    assert viewer.post(f"/ops/alerts/{alert.pk}/acknowledge/").status_code == 403
