"""Enumerations shared by the core models, services and apps."""

from __future__ import annotations

from django.db import models


class SystemKind(models.TextChoices):
    EHR = "ehr", "EHR"
    RCM = "rcm", "Revenue cycle"
    ERP = "erp", "ERP"
    SAAS = "saas", "SaaS / other"


class Direction(models.TextChoices):
    INBOUND = "inbound", "Inbound"
    OUTBOUND = "outbound", "Outbound"


class Protocol(models.TextChoices):
    HL7V2 = "hl7v2", "HL7 v2 / MLLP"
    FHIR = "fhir", "FHIR R4"
    REST = "rest", "REST / JSON"
    FILE = "file", "Files / SFTP"
    X12 = "x12", "X12 5010"
    SOAP = "soap", "SOAP web service"
    DATABASE = "database", "Database (polled table)"
    STREAM = "stream", "Event stream (NATS JetStream)"


class Lane(models.TextChoices):
    """Workload lanes: clinical events never wait behind batch or replay work."""

    CLINICAL = "clinical", "Clinical (real time)"
    FINANCIAL = "financial", "Financial"
    BATCH = "batch", "Batch / replay"


class MessageStatus(models.TextChoices):
    RECEIVED = "received", "Received"  # stored and acknowledged, waiting for the worker
    PROCESSING = "processing", "Processing"  # claimed by a worker
    PROCESSED = "processed", "Processed"  # canonical events emitted
    IGNORED = "ignored", "Ignored"  # a valid message no mapping asks for
    DUPLICATE = "duplicate", "Duplicate"  # same sender + control id seen before: kept, not processed
    FAILED = "failed", "Failed"  # bad data: mapping or schema validation failed; an exception item exists
    REJECTED = "rejected", "Rejected"  # unusable at the door (not HL7, no MSH, unsupported type); NAKed


class VersionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class Transform(models.TextChoices):
    """Declarative transforms a mapping rule may apply; no arbitrary code."""

    NONE = "", "None"
    HL7_DATETIME = "hl7_datetime", "HL7 date/time to ISO 8601"
    HL7_DATE = "hl7_date", "HL7 date to ISO date"
    DECIMAL = "decimal", "Decimal number"
    INTEGER = "integer", "Integer"
    UPPER = "upper", "Upper case"
    LOOKUP = "lookup", "Code lookup"
    DEFAULT = "default", "Default when empty"
    REGEX = "regex", "Regex extract"
    CONCAT = "concat", "Concatenate"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SUCCEEDED = "succeeded", "Succeeded"
    RETRYING = "retrying", "Waiting to retry"
    FAILED = "failed", "Failed"  # permanent error or retries exhausted; an exception item exists


class ExceptionKind(models.TextChoices):
    MISSING_DATA = "missing_data", "Missing data"
    MAPPING_FAILED = "mapping_failed", "Mapping failed"
    SCHEMA_INVALID = "schema_invalid", "Schema invalid"
    DESTINATION_REJECTED = "destination_rejected", "Destination rejected"
    DESTINATION_DOWN = "destination_down", "Destination down"
    SLA_BREACHED = "sla_breached", "SLA breached"
    MISMATCH = "mismatch", "Mismatch"


class ExceptionStatus(models.TextChoices):
    OPEN = "open", "Open"
    IN_PROGRESS = "in_progress", "In progress"
    WAITING = "waiting", "Waiting"
    RESOLVED = "resolved", "Resolved"
    IGNORED = "ignored", "Ignored"


OPEN_EXCEPTION_STATUSES = (ExceptionStatus.OPEN, ExceptionStatus.IN_PROGRESS, ExceptionStatus.WAITING)


class RunStatus(models.TextChoices):
    """Workflow run states shared by every workflow; the step names are each workflow's own."""

    ACTIVE = "active", "In progress"
    BLOCKED = "blocked", "Blocked by an exception"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class JobRunStatus(models.TextChoices):
    """A scheduled sync job's run: failed is expected bad data, errored is a bug (the traceback is kept)."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    ERRORED = "errored", "Errored"
    SKIPPED = "skipped", "Skipped (the previous run was still going)"


ACTIVE_JOB_RUN_STATUSES = (JobRunStatus.PENDING, JobRunStatus.RUNNING)


class ReplayKind(models.TextChoices):
    MESSAGE = "message", "One message"
    FILTERED = "filtered", "A filtered set"
    EXCEPTION = "exception", "From an exception"
    EDIT = "edit", "Edit and replay"


class ChangeKind(models.TextChoices):
    """What a change request changes; each kind has a handler in healthsync/governance/kinds.py."""

    SYSTEM = "system", "System"
    CONNECTOR = "connector", "Connector configuration"
    MAPPING = "mapping", "Mapping set"
    SCHEMA = "schema", "Schema version"
    OWNERSHIP = "ownership", "Data ownership"
    OWNERSHIP_EXCEPTION = "ownership_exception", "Data ownership exception"
    WORKFLOW_SLA = "workflow_sla", "Workflow SLA"
    CODE_TABLE = "code_table", "Code table"


class ChangeStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    DEPLOYED = "deployed", "Deployed"


class ReviewDecision(models.TextChoices):
    APPROVE = "approve", "Approved"
    REJECT = "reject", "Rejected"
    REQUEST_CHANGES = "request_changes", "Changes requested"
    COMMENT = "comment", "Comment"


class ApiScope(models.TextChoices):
    """What an API client may do; every API endpoint requires one (read for GET, write for changes)."""

    SYSTEMS_READ = "systems:read", "Systems and connectors: read"
    MAPPINGS_READ = "mappings:read", "Mapping sets and versions: read"
    SCHEMAS_READ = "schemas:read", "Schema versions: read"
    OWNERSHIP_READ = "ownership:read", "Data ownership: read"
    CHANGES_READ = "changes:read", "Change requests: read"
    CHANGES_WRITE = "changes:write", "Change requests: submit, approve, reject"
    MESSAGES_READ = "messages:read", "Messages: search and detail"
    MESSAGES_WRITE = "messages:write", "Messages: replay"
    EVENTS_READ = "events:read", "Canonical events: read"
    WORKFLOWS_READ = "workflows:read", "Workflow runs: read"
    EXCEPTIONS_READ = "exceptions:read", "Exceptions: read"
    EXCEPTIONS_WRITE = "exceptions:write", "Exceptions: assign, comment, resolve, retry"
    KPIS_READ = "kpis:read", "KPIs: read"
    INBOUND_WRITE = "inbound:write", "Inbound endpoints: deliver messages (FHIR, REST/JSON)"


class AlertKind(models.TextChoices):
    """What an operations alert watches on a connector."""

    QUIET = "quiet", "Connector quiet"
    QUEUE_DEPTH = "queue_depth", "Queue above threshold"
    QUEUE_GROWING = "queue_growing", "Queue growing"


class AlertState(models.TextChoices):
    """An operations alert's life: raised by the check, acknowledged by an engineer, cleared by the check."""

    RAISED = "raised", "Raised"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    CLEARED = "cleared", "Cleared"


OPEN_ALERT_STATES = (AlertState.RAISED, AlertState.ACKNOWLEDGED)
