"""The core's models, one module per area; import them from here."""

from healthsync.models.api import (
    ApiClient,
    ApiUsage,
)
from healthsync.models.core import (
    CanonicalEvent,
    Connector,
    DataOwnership,
    Delivery,
    ExceptionComment,
    ExceptionItem,
    MappingRule,
    MappingSet,
    MappingVersion,
    Message,
    SchemaVersion,
    System,
)
from healthsync.models.governance import (
    ChangeRequest,
    ChangeReview,
    OwnershipException,
    SampleCase,
)
from healthsync.models.runtime import (
    ConnectorAlert,
    ConnectorMetric,
    PruneRun,
    ReplayItem,
    ReplayRequest,
    RetentionPolicy,
    SyncJobRun,
)

__all__ = [
    "ApiClient",
    "ApiUsage",
    "CanonicalEvent",
    "ChangeRequest",
    "ChangeReview",
    "Connector",
    "ConnectorAlert",
    "ConnectorMetric",
    "DataOwnership",
    "Delivery",
    "ExceptionComment",
    "ExceptionItem",
    "MappingRule",
    "MappingSet",
    "MappingVersion",
    "Message",
    "OwnershipException",
    "PruneRun",
    "ReplayItem",
    "ReplayRequest",
    "RetentionPolicy",
    "SampleCase",
    "SchemaVersion",
    "SyncJobRun",
    "System",
]
