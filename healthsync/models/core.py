"""The core domain: systems and connectors, governed configuration, the message store and its lineage."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from healthsync.choices import (
    OPEN_EXCEPTION_STATUSES,
    DeliveryStatus,
    Direction,
    ExceptionKind,
    ExceptionStatus,
    Lane,
    MessageStatus,
    Protocol,
    SystemKind,
    Transform,
    VersionStatus,
)


class System(models.Model):
    """An enterprise system HealthSync keeps in step: an EHR, a revenue-cycle system, an ERP, a SaaS."""

    code = models.SlugField(max_length=50, unique=True, help_text="Short stable name, e.g. epic-main.")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=SystemKind.choices)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Connector(models.Model):
    """One configured way in or out of a system: a protocol, a direction and its validated settings."""

    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="connectors")
    code = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    protocol = models.CharField(max_length=10, choices=Protocol.choices)
    config = models.JSONField(
        default=dict, blank=True, help_text="Protocol settings, validated by its adapter."
    )
    lane = models.CharField(max_length=10, choices=Lane.choices, default=Lane.CLINICAL)
    is_enabled = models.BooleanField(default=True)
    # Credentials (passwords, API keys, client secrets) as one Fernet token; read and write `secrets`.
    secrets_token = models.TextField(blank=True, default="", editable=False)
    # Delivery policy (outbound): attempts, exponential backoff from this base, per-attempt timeout.
    retry_max_attempts = models.PositiveSmallIntegerField(default=5)
    retry_backoff_seconds = models.FloatField(default=2.0)
    timeout_seconds = models.FloatField(default=10.0)
    # Circuit breaker: after `breaker_threshold` consecutive transient failures the destination pauses.
    breaker_threshold = models.PositiveSmallIntegerField(default=5)
    consecutive_failures = models.PositiveIntegerField(default=0)
    breaker_open_until = models.DateTimeField(null=True, blank=True)
    # When the breaker last opened (None while closed) and how often it has opened, for the operations page.
    breaker_opened_at = models.DateTimeField(null=True, blank=True)
    breaker_trips = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["system__name", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_protocol_display()} {self.direction})"

    @property
    def secrets(self) -> dict[str, str]:
        """The decrypted credentials; raises healthsync.secrets.SecretsUnreadable when the key is wrong."""
        from healthsync.secrets import decrypt_secrets

        cached = getattr(self, "_secrets_cache", None)
        if cached is not None and cached[0] == self.secrets_token:
            return dict(cached[1])
        values = decrypt_secrets(self.secrets_token)
        self._secrets_cache = (self.secrets_token, values)
        return dict(values)

    @secrets.setter
    def secrets(self, values: dict[str, str]) -> None:
        from healthsync.secrets import encrypt_secrets

        self.secrets_token = encrypt_secrets(values)
        self._secrets_cache = (self.secrets_token, {k: v for k, v in values.items() if v not in (None, "")})

    @property
    def breaker_state(self) -> str:
        """closed, open (pausing until breaker_open_until) or half-open (the next send is a probe)."""
        if self.breaker_open_until is None:
            return "closed"
        return "open" if self.breaker_open_until > timezone.now() else "half-open"

    def clean(self) -> None:
        from healthsync.registry import connector_registry

        try:
            adapter = connector_registry.get(self.protocol)
        except KeyError:
            raise ValidationError({"protocol": f"No adapter is registered for {self.protocol!r}."}) from None
        errors = adapter.validate_config(self.direction, self.config or {})
        if errors:
            raise ValidationError({"config": errors})


class MappingSet(models.Model):
    """A governed mapping from one kind of source message to one canonical event type."""

    code = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    protocol = models.CharField(max_length=10, choices=Protocol.choices)
    message_type = models.CharField(max_length=40, help_text="Source type it applies to, e.g. ADT^A03.")
    event_type = models.CharField(
        max_length=80, help_text="Canonical event it emits, e.g. encounter.discharged."
    )
    description = models.TextField(blank=True)
    # Switching this one column is what makes a new version live, atomically.
    active_version = models.ForeignKey(
        "MappingVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.message_type} → {self.event_type})"


class MappingVersion(models.Model):
    """One immutable version of a mapping set's rules; only an approved, active version runs."""

    mapping_set = models.ForeignKey(MappingSet, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    note = models.TextField(blank=True, help_text="Why this version exists.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["mapping_set", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["mapping_set", "number"], name="mapping_version_number")
        ]
        permissions = [("approve_mappingversion", "Can approve and activate mapping versions")]

    def __str__(self) -> str:
        return f"{self.mapping_set.code} v{self.number}"


class MappingRule(models.Model):
    """One field of a mapping version: source path → canonical field, through an optional transform."""

    version = models.ForeignKey(MappingVersion, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveIntegerField(default=0)
    target = models.CharField(
        max_length=120, help_text="Canonical field, dotted for nesting: coverage.plan_id."
    )
    source = models.CharField(
        max_length=200,
        blank=True,
        help_text="HL7 path such as PV1-19.1; DG1[*]-3.1 collects every repetition into a list.",
    )
    transform = models.CharField(max_length=20, choices=Transform.choices, blank=True, default=Transform.NONE)
    argument = models.JSONField(
        default=dict, blank=True, help_text="Transform settings (lookup table, default)."
    )
    required = models.BooleanField(default=False)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["version", "position", "id"]

    def __str__(self) -> str:
        return f"{self.source or '(constant)'} → {self.target}"


class SchemaVersion(models.Model):
    """A JSON Schema for one canonical event type at one semantic version."""

    event_type = models.CharField(max_length=80)
    version = models.CharField(max_length=20, help_text="Semantic version, e.g. 1.0.0.")
    json_schema = models.JSONField()
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["event_type", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_type", "version"], name="schema_event_version"),
            models.UniqueConstraint(
                fields=["event_type"], condition=Q(status="active"), name="one_active_schema_per_event"
            ),
        ]
        permissions = [("approve_schemaversion", "Can approve and activate schema versions")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.version}"


class DataOwnership(models.Model):
    """Which system is the system of record for a data domain (or one field of it), and who stewards it."""

    domain = models.CharField(max_length=80, help_text="e.g. encounter, coverage, claim, journal.")
    field = models.CharField(max_length=120, blank=True, help_text="Blank: the whole domain.")
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="owned_domains")
    steward = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="stewarded_domains",
    )
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["domain", "field"]
        verbose_name_plural = "data ownership"
        constraints = [models.UniqueConstraint(fields=["domain", "field"], name="one_owner_per_domain_field")]

    def __str__(self) -> str:
        return f"{self.domain}{'.' + self.field if self.field else ''} → {self.system}"


class MessageQuerySet(models.QuerySet["Message"]):
    def pending(self) -> MessageQuerySet:
        return self.filter(status=MessageStatus.RECEIVED)


# Messages still in the queue: waiting for a worker or being processed.
_WAITING = Q(status__in=["received", "processing"])


class Message(models.Model):
    """One inbound payload exactly as received, kept before it is acknowledged; the store is the queue.

    On PostgreSQL the table is range-partitioned by received_at (healthsync.partitions), so retention drops
    whole partitions. The database's primary key is therefore (id, received_at) and nothing may be unique
    without received_at: foreign keys to and from messages are kept by Django only (db_constraint=False),
    and the duplicate check lives in MessageKey. `id` alone still identifies a message (one sequence).
    """

    # No database constraint: partition DDL (attach, detach, drop) would otherwise lock the connector table.
    # No index of its own either: message_connector_time (connector, received_at) serves every lookup by connector,
    # and each index costs a write per message stored, triaged, claimed and finished.
    connector = models.ForeignKey(
        Connector, on_delete=models.PROTECT, related_name="messages", db_constraint=False, db_index=False
    )
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    raw = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    sender = models.CharField(max_length=200, blank=True, help_text="MSH-3^MSH-4, or the peer for non-HL7.")
    control_id = models.CharField(max_length=200, blank=True, help_text="MSH-10 or the source's own id.")
    message_type = models.CharField(max_length=40, blank=True, help_text="e.g. ADT^A03")
    # Set only on the first copy of a (connector, sender, control id); MessageKey holds the unique copy.
    dedupe_key = models.CharField(max_length=420, null=True, blank=True)  # noqa: DJ001 (null: no key)
    # Indexed only where set (message_duplicates, message_replays): most messages are neither.
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    replay_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replays",
        db_constraint=False,
        db_index=False,
    )
    status = models.CharField(max_length=12, choices=MessageStatus.choices, default=MessageStatus.RECEIVED)
    lane = models.CharField(max_length=10, choices=Lane.choices, default=Lane.CLINICAL)
    business_key = models.CharField(max_length=200, blank=True)  # indexed by message_business_key
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # When a worker claimed it: a claim older than the worker's timeout belongs to a dead worker.
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Which worker holds the claim: a worker only finishes messages it still holds after a stale release.
    claimed_by = models.CharField(max_length=80, blank=True)
    # The business key messages are ordered by (an encounter). Null (not yet read) differs from "" (no key).
    sequence_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        # Every index costs a write each time a message is stored, claimed and finished (a status change is
        # never a HOT update). So the queue indexes hold waiting messages only (a finished message leaves
        # them), the links to other messages only the rows that have one, and none is varchar_pattern_ops.
        indexes = [
            models.Index(fields=["status", "lane", "id"], name="message_queue", condition=_WAITING),
            models.Index(fields=["sequence_key", "id"], name="message_sequence", condition=_WAITING),
            models.Index(
                fields=["id"],
                condition=Q(status="received", sequence_key__isnull=True),
                name="message_untriaged",
            ),
            # The operations page's "last message" per connector.
            models.Index(fields=["connector", "received_at"], name="message_connector_time"),
            models.Index(fields=["business_key"], name="message_business_key"),
            models.Index(
                fields=["duplicate_of"], name="message_duplicates", condition=Q(duplicate_of__isnull=False)
            ),
            models.Index(fields=["replay_of"], name="message_replays", condition=Q(replay_of__isnull=False)),
        ]
        permissions = [
            ("view_phi", "Can view protected health information"),
            ("replay_message", "Can replay messages"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.message_type or 'unknown'} {self.control_id}"

    @property
    def raw_text(self) -> str:
        return bytes(self.raw).decode("utf-8", errors="replace")


class MessageKey(models.Model):
    """The first stored copy of one (connector, sender, control id): the duplicate check, across partitions.

    A partitioned table cannot hold a unique index without the partition key, so the dedupe key is unique
    here, in a narrow unpartitioned table written in the same transaction as the message. Deleting the
    message releases its key (Django's cascade, or the partition pruner).
    """

    key = models.CharField(max_length=420, primary_key=True)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+", db_constraint=False)

    def __str__(self) -> str:
        return f"{self.key} → #{self.message_id}"


class CanonicalEvent(models.Model):
    """A canonical business event (CloudEvents envelope) with its lineage: source message and mapping version."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=80)  # indexed by event_type_time (type, recorded_at)
    source = models.CharField(max_length=200, help_text="The system that emitted the fact.")
    subject = models.CharField(max_length=200, help_text="The business key, e.g. encounter id.")
    occurred_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)
    facility = models.CharField(max_length=80, blank=True)
    idempotency_key = models.CharField(max_length=300, unique=True)
    source_ref = models.CharField(max_length=200, blank=True, help_text="MSH-10, FHIR id, claim ICN.")
    correlation = models.JSONField(default=dict, blank=True)
    data = models.JSONField(default=dict)
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="events", db_constraint=False
    )
    mapping_version = models.ForeignKey(
        MappingVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    schema_version = models.ForeignKey(
        SchemaVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )

    class Meta:
        ordering = ["-recorded_at"]
        # No varchar_pattern_ops twins (Django's default for an indexed CharField): nothing looks keys up by
        # prefix, and every index costs a write per event.
        indexes = [
            models.Index(fields=["type", "recorded_at"], name="event_type_time"),
            models.Index(fields=["subject"], name="event_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.subject}"


class Delivery(models.Model):
    """One outbound effect on a destination, keyed for idempotency; its stored reply is the answer to a repeat."""

    connector = models.ForeignKey(Connector, on_delete=models.PROTECT, related_name="deliveries")
    operation = models.CharField(max_length=80, help_text="What to do at the destination, e.g. submit_claim.")
    idempotency_key = models.CharField(max_length=300, unique=True)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    response = models.JSONField(null=True, blank=True)
    external_id = models.CharField(max_length=200, blank=True, help_text="Claim id, ERP document number.")
    workflow = models.CharField(max_length=80, blank=True)
    business_key = models.CharField(max_length=200, blank=True)  # indexed by delivery_business_key
    event = models.ForeignKey(
        CanonicalEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        permissions = [("retry_delivery", "Can retry deliveries")]
        indexes = [
            # The operations page: each connector's outbound queue and its last delivered effect, without
            # scanning every delivery ever made.
            models.Index(
                fields=["connector"],
                condition=Q(status__in=["pending", "retrying", "sending"]),
                name="delivery_waiting",
            ),
            models.Index(
                fields=["connector", "succeeded_at"],
                condition=Q(status="succeeded"),
                name="delivery_last_success",
            ),
            models.Index(fields=["business_key"], name="delivery_business_key"),
        ]

    def __str__(self) -> str:
        return f"{self.operation} → {self.connector.code} [{self.status}]"


class ExceptionItemQuerySet(models.QuerySet["ExceptionItem"]):
    def open(self) -> ExceptionItemQuerySet:
        return self.filter(status__in=OPEN_EXCEPTION_STATUSES)


class ExceptionItem(models.Model):
    """Something a person must look at: why a message, event or delivery could not go on, and how to recover."""

    kind = models.CharField(max_length=24, choices=ExceptionKind.choices)
    status = models.CharField(max_length=12, choices=ExceptionStatus.choices, default=ExceptionStatus.OPEN)
    reason = models.TextField(help_text="Plain-language reason for revenue-cycle staff.")
    detail = models.JSONField(
        default=dict, blank=True, help_text="Machine detail: missing fields, error text."
    )
    workflow = models.CharField(max_length=80, blank=True)
    business_key = models.CharField(max_length=200, blank=True)  # indexed by exception_key_kind
    facility = models.CharField(max_length=80, blank=True)
    payer = models.CharField(max_length=120, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    event = models.ForeignKey(
        CanonicalEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sla_due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution_note = models.TextField(blank=True)

    objects = ExceptionItemQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "kind"], name="exception_queue"),
            # A workflow looks up its run's open exception of a kind once per event that blocks the run: by
            # key and kind, not by scanning every open exception of the kind.
            models.Index(fields=["business_key", "kind"], name="exception_key_kind"),
        ]
        permissions = [("work_exceptionitem", "Can work exceptions: assign, fix, retry, resolve")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.business_key}"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_EXCEPTION_STATUSES

    @property
    def age(self) -> Any:
        return timezone.now() - self.created_at


class ExceptionComment(models.Model):
    """A note left on an exception by the people working it."""

    exception = models.ForeignKey(ExceptionItem, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"comment by {self.author} on {self.exception_id}"
