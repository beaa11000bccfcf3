"""Registries through which the apps plug into the core without the core importing them.

`connectors` registers one adapter per protocol; `workflows` registers handlers for canonical events and
for delivery outcomes. Both do it from their AppConfig.ready().
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from healthsync.models import CanonicalEvent, Connector, Delivery, ExceptionItem


class ParsedMessage(Protocol):
    """What the mapping engine needs from a parsed source message."""

    def get(self, path: str) -> str: ...

    def get_all(self, path: str) -> list[str]: ...


@dataclass(frozen=True)
class SendResult:
    """What a destination answered: its reply and the id it gave the effect (claim id, document number)."""

    response: dict[str, Any]
    external_id: str = ""


class ConnectorAdapter(Protocol):
    """One protocol's behaviour. Adapters know bytes and wire formats, never business rules."""

    protocol: str

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]: ...

    def parse(self, raw: bytes) -> ParsedMessage: ...

    def send(self, connector: Connector, delivery: Delivery) -> SendResult: ...


class ConnectorRegistry:
    def __init__(self) -> None:
        self._adapters: dict[str, ConnectorAdapter] = {}

    def register(self, adapter: ConnectorAdapter) -> None:
        self._adapters[adapter.protocol] = adapter

    def get(self, protocol: str) -> ConnectorAdapter:
        return self._adapters[protocol]

    def protocols(self) -> list[str]:
        return sorted(self._adapters)


EventHandler = Callable[["CanonicalEvent"], None]
DeliveryHandler = Callable[["Delivery"], None]
# (exception, fixes, actor): apply the fixes to the workflow's own state and carry the work on.
RetryHandler = Callable[["ExceptionItem", dict[str, str], "User"], None]


@dataclass
class WorkflowRegistry:
    """Workflows subscribe to canonical event types and to the outcome of the deliveries they asked for."""

    event_handlers: dict[str, list[EventHandler]] = field(default_factory=lambda: defaultdict(list))
    delivery_handlers: dict[str, DeliveryHandler] = field(default_factory=dict)
    retry_handlers: dict[str, RetryHandler] = field(default_factory=dict)

    def on_event(self, event_type: str, handler: EventHandler) -> None:
        self.event_handlers[event_type].append(handler)

    def on_delivery(self, workflow: str, handler: DeliveryHandler) -> None:
        """`handler` runs when a delivery requested by `workflow` succeeds or finally fails."""
        self.delivery_handlers[workflow] = handler

    def on_retry(self, workflow: str, handler: RetryHandler) -> None:
        """`handler` runs when someone retries an exception raised for `workflow` (services.exception_retry)."""
        self.retry_handlers[workflow] = handler

    def retry_handler_for(self, workflow: str) -> RetryHandler | None:
        return self.retry_handlers.get(workflow)

    def handlers_for(self, event_type: str) -> list[EventHandler]:
        return list(self.event_handlers.get(event_type, ()))


connector_registry = ConnectorRegistry()
workflow_registry = WorkflowRegistry()


MappingProvider = Callable[[], list[dict[str, Any]]]
SchemaProvider = Callable[[], dict[str, dict[str, Any]]]


@dataclass
class ReferenceConfig:
    """Reference mapping sets and schemas the apps contribute to a new install (healthsync.seed)."""

    mapping_providers: list[MappingProvider] = field(default_factory=list)
    schema_providers: list[SchemaProvider] = field(default_factory=list)

    def add(self, *, mappings: MappingProvider | None = None, schemas: SchemaProvider | None = None) -> None:
        if mappings and mappings not in self.mapping_providers:
            self.mapping_providers.append(mappings)
        if schemas and schemas not in self.schema_providers:
            self.schema_providers.append(schemas)

    def mappings(self) -> list[dict[str, Any]]:
        return [spec for provider in self.mapping_providers for spec in provider()]

    def schemas(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for provider in self.schema_providers:
            merged.update(provider())
        return merged


reference_config = ReferenceConfig()
