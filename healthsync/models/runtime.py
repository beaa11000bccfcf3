"""The runtime's own records: replays and their audit, scheduled job runs, retention and pruning, telemetry."""

from __future__ import annotations

from auditlog.registry import auditlog
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from healthsync.choices import (
    ACTIVE_JOB_RUN_STATUSES,
    OPEN_ALERT_STATES,
    AlertKind,
    AlertState,
    JobRunStatus,
    Lane,
    MessageStatus,
    ReplayKind,
)
from healthsync.models.core import Connector, Message


class ReplayRequest(models.Model):
    """One replay someone asked for: who, why, what (the criteria or message) and to which destinations."""

    kind = models.CharField(max_length=10, choices=ReplayKind.choices)
    reason = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept beside the FK so that the audit row still names the person after their account is removed.
    actor_username = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    criteria = models.JSONField(default=dict, blank=True, help_text="The filter or message ids replayed.")
    destinations = models.ManyToManyField(
        Connector, blank=True, related_name="+", help_text="Empty: every destination."
    )
    exception = models.ForeignKey(
        "healthsync.ExceptionItem", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message_count = models.PositiveIntegerField(default=0)
    deliveries_resent = models.PositiveIntegerField(default=0)
    deliveries_unchanged = models.PositiveIntegerField(
        default=0, help_text="Deliveries that had already succeeded: the destination keeps its one effect."
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"replay #{self.pk} of {self.message_count} message(s) by {self.actor_username}"


class ReplayItem(models.Model):
    """One message of a replay: the original (kept untouched) and the new message that re-ran it."""

    request = models.ForeignKey(ReplayRequest, on_delete=models.CASCADE, related_name="items")
    original = models.ForeignKey(
        Message, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    original_number = models.BigIntegerField(help_text="The original's id, kept after it is pruned.")
    replay = models.ForeignKey(
        Message, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    edited = models.BooleanField(default=False)
    deliveries_resent = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["request", "id"]

    def __str__(self) -> str:
        return f"#{self.original_number} → #{self.replay_id}"


class SyncJobRun(models.Model):
    """One run of a scheduled sync job, with its outcome, counts, log and (for a bug) traceback."""

    job = models.CharField(max_length=80, db_index=True)
    lane = models.CharField(max_length=10, choices=Lane.choices, default=Lane.BATCH)
    status = models.CharField(max_length=10, choices=JobRunStatus.choices, default=JobRunStatus.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    worker = models.CharField(max_length=120, blank=True, help_text="host:pid of the process that ran it.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job", "-created_at"], name="jobrun_job_time")]
        constraints = [
            # The overlap guard: the database refuses a second active run of one job, across processes and hosts.
            models.UniqueConstraint(
                fields=["job"],
                condition=Q(status__in=[str(status) for status in ACTIVE_JOB_RUN_STATUSES]),
                name="one_active_run_per_job",
            )
        ]

    def __str__(self) -> str:
        return f"{self.job} run #{self.pk} [{self.status}]"

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class RetentionPolicy(models.Model):
    """How long messages are kept, for one connector and/or one status; the most specific policy wins."""

    connector = models.ForeignKey(
        Connector, null=True, blank=True, on_delete=models.CASCADE, related_name="retention_policies"
    )
    status = models.CharField(
        max_length=12, choices=MessageStatus.choices, blank=True, help_text="Blank: every status."
    )
    keep_days = models.PositiveIntegerField()
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name_plural = "retention policies"
        ordering = ["connector__code", "status"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "status"],
                condition=Q(connector__isnull=False),
                name="one_retention_per_connector_status",
            ),
            models.UniqueConstraint(
                fields=["status"],
                condition=Q(connector__isnull=True),
                name="one_default_retention_per_status",
            ),
        ]

    def __str__(self) -> str:
        who = self.connector.code if self.connector_id else "any connector"
        return f"{who}/{self.status or 'any status'}: {self.keep_days} days"


class PruneRun(models.Model):
    """One pass of the pruner: what it deleted (or would delete, on a dry run), per connector and status."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    dry_run = models.BooleanField(default=False)
    messages_deleted = models.PositiveIntegerField(default=0)
    skipped_open_exceptions = models.PositiveIntegerField(default=0)
    counts = models.JSONField(
        default=dict, blank=True, help_text="{connector: {status: n}}; others: {table: n}."
    )
    log = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"prune #{self.pk}: {self.messages_deleted} messages{' (dry run)' if self.dry_run else ''}"


class ConnectorMetric(models.Model):
    """One connector's traffic in one minute: counts, queue depth and latency percentiles (milliseconds)."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="metrics")
    minute = models.DateTimeField(help_text="Start of the minute (UTC).")
    messages_in = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(
        default=0, help_text="Failed or rejected messages, failed deliveries."
    )
    messages_out = models.PositiveIntegerField(default=0, help_text="Deliveries that succeeded.")
    retries = models.PositiveIntegerField(default=0)
    queue_depth = models.PositiveIntegerField(
        default=0, help_text="Waiting work when the minute was rolled up."
    )
    processing_p50_ms = models.FloatField(null=True, blank=True)
    processing_p95_ms = models.FloatField(null=True, blank=True)
    delivery_p50_ms = models.FloatField(null=True, blank=True)
    delivery_p95_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-minute", "connector"]
        constraints = [models.UniqueConstraint(fields=["connector", "minute"], name="one_metric_per_minute")]
        indexes = [models.Index(fields=["minute"], name="metric_minute")]

    def __str__(self) -> str:
        return f"{self.connector_id} @ {self.minute:%Y-%m-%d %H:%M}"


class ConnectorAlert(models.Model):
    """One operations alert on a connector (quiet, queue deep or growing), from raised to cleared.

    Not an ExceptionItem: exceptions are business work for revenue-cycle staff; an alert is technical health
    for integration engineers and clears itself when the condition ends.
    """

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    state = models.CharField(max_length=14, choices=AlertState.choices, default=AlertState.RAISED)
    message = models.CharField(max_length=300)
    value = models.FloatField(help_text="What was measured: minutes quiet or queue depth.")
    threshold = models.FloatField(help_text="The threshold in force when the alert was raised.")
    raised_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(
        default=timezone.now, help_text="Last check that found the condition."
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        constraints = [
            # The check raises at most one open alert per connector and kind, whichever worker runs it.
            models.UniqueConstraint(
                fields=["connector", "kind"],
                condition=Q(state__in=OPEN_ALERT_STATES),
                name="one_open_alert_per_kind",
            )
        ]
        indexes = [models.Index(fields=["state", "raised_at"], name="alert_state_raised")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.connector_id} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_ALERT_STATES


# Retention is configuration: every change is versioned with its actor like the rest of the config.
auditlog.register(RetentionPolicy)
