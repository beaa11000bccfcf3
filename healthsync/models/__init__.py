"""The core's models, one module per area; import them from here."""

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

__all__ = [
    "CanonicalEvent",
    "Connector",
    "DataOwnership",
    "Delivery",
    "ExceptionComment",
    "ExceptionItem",
    "MappingRule",
    "MappingSet",
    "MappingVersion",
    "Message",
    "SchemaVersion",
    "System",
]
