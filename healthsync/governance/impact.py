"""Who is affected by a change: connectors, mapping sets, workflows and event subscribers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from healthsync.choices import ChangeKind, Direction, Transform
from healthsync.models import Connector, DataOwnership, Delivery, MappingSet
from healthsync.registry import workflow_registry


@dataclass
class Impact:
    """Names of what uses the changed object, for the review page."""

    connectors: list[str] = field(default_factory=list)
    mapping_sets: list[str] = field(default_factory=list)
    workflows: list[str] = field(default_factory=list)
    subscribers: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.connectors or self.mapping_sets or self.workflows or self.subscribers)


def event_subscribers(event_type: str) -> list[str]:
    """The handlers subscribed to an event type, as module.function names."""
    return sorted(
        f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"
        for handler in workflow_registry.handlers_for(event_type)
    )


def _workflows_of(subscribers: list[str]) -> list[str]:
    # Workflows live in workflows/<name>.py; the module is the workflow's name.
    return sorted({name.rsplit(".", 1)[0].rsplit(".", 1)[-1] for name in subscribers})


def inbound_connectors(protocol: str, message_type: str) -> list[Connector]:
    """Inbound connectors that can receive this message type (those without a type list receive every type)."""
    found = []
    for connector in Connector.objects.filter(direction=Direction.INBOUND, protocol=protocol).select_related(
        "system"
    ):
        accepted = (connector.config or {}).get("accepted_types")
        if not accepted or message_type in accepted:
            found.append(connector)
    return found


def impact_of(kind: str, data: dict[str, Any]) -> Impact:
    impact = Impact()
    if kind == ChangeKind.MAPPING:
        impact.connectors = [
            c.code for c in inbound_connectors(data.get("protocol", ""), data.get("message_type", ""))
        ]
        impact.subscribers = event_subscribers(data.get("event_type", ""))
    elif kind == ChangeKind.SCHEMA:
        event_type = data.get("event_type", "")
        impact.mapping_sets = list(
            MappingSet.objects.filter(event_type=event_type).order_by("code").values_list("code", flat=True)
        )
        impact.subscribers = event_subscribers(event_type)
    elif kind == ChangeKind.CONNECTOR:
        code = data.get("code", "")
        if data.get("direction") == Direction.INBOUND:
            types = (data.get("config") or {}).get("accepted_types")
            sets = MappingSet.objects.filter(protocol=data.get("protocol", ""))
            if types:
                sets = sets.filter(message_type__in=types)
            impact.mapping_sets = list(sets.order_by("code").values_list("code", flat=True))
            impact.subscribers = sorted({s for m in sets for s in event_subscribers(m.event_type)})
        else:
            impact.workflows = sorted(
                set(
                    Delivery.objects.filter(connector__code=code)
                    .exclude(workflow="")
                    .values_list("workflow", flat=True)
                )
            )
    elif kind in (ChangeKind.OWNERSHIP, ChangeKind.OWNERSHIP_EXCEPTION):
        domain = data.get("domain", "")
        sets = [m for m in MappingSet.objects.order_by("code") if domain in mapping_domains(m.event_type, [])]
        impact.mapping_sets = [m.code for m in sets]
        impact.subscribers = sorted({s for m in sets for s in event_subscribers(m.event_type)})
    elif kind == ChangeKind.CODE_TABLE:
        sets = mapping_sets_using_code_table(data.get("code", ""))
        impact.mapping_sets = [m.code for m in sets]
        impact.subscribers = sorted({s for m in sets for s in event_subscribers(m.event_type)})
    elif kind == ChangeKind.WORKFLOW_SLA:
        impact.workflows = [data.get("workflow", "")]
    elif kind == ChangeKind.SYSTEM:
        impact.connectors = list(
            Connector.objects.filter(system__code=data.get("code", ""))
            .order_by("code")
            .values_list("code", flat=True)
        )
    if not impact.workflows:
        impact.workflows = _workflows_of(impact.subscribers)
    return impact


def target_domain_field(event_type: str, target: str) -> tuple[str, str] | None:
    """The (domain, field) a mapping target writes; None for envelope targets."""
    if target.startswith("event."):
        return None
    path = target.replace("[]", "")
    head, _, rest = path.partition(".")
    owned = set(DataOwnership.objects.values_list("domain", flat=True))
    if head in owned and rest:
        return head, rest
    return event_type.split(".")[0], head


def mapping_domains(event_type: str, rules: list[dict[str, Any]]) -> list[str]:
    """Data domains a mapping writes: its event's domain and the owned domains its targets name."""
    domains = {event_type.split(".")[0]} if event_type else set()
    for rule in rules:
        found = target_domain_field(event_type, rule.get("target", ""))
        if found:
            domains.add(found[0])
    return sorted(domains)


def mapping_sets_using_code_table(code: str) -> list[MappingSet]:
    """The mapping sets whose active rules look codes up in the code table `code`."""
    return list(
        MappingSet.objects.filter(
            active_version__rules__transform=Transform.LOOKUP,
            active_version__rules__argument__code_table=code,
        )
        .distinct()
        .order_by("code")
    )
