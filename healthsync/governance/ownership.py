"""Data ownership: which system may write which domain and field, the review findings and the run-time block.

Each outbound operation declares what it writes in its destination (`writes: [claim]` in the connector's
`operations` entry; `claim.amount` for one field). Review flags an operation writing into a system that is
not the system of record; at send time such a delivery is refused unless an approved exception exists.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q

from healthsync.choices import ChangeKind, DeliveryStatus, Direction, ExceptionKind
from healthsync.governance.impact import inbound_connectors, target_domain_field
from healthsync.models import Connector, DataOwnership, Delivery, ExceptionItem, OwnershipException, System

logger = logging.getLogger(__name__)

WRITE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_.\[\]]+)?$")


def _code(system: System | str) -> str:
    return system.code if isinstance(system, System) else str(system)


def ownership_check(*, system: System | str, domain: str, field: str = "") -> bool:
    """True when `system` may write `domain.field`: it is the system of record, nobody owns the field, or an
    approved, active exception lets it. The field-level entry wins over the domain-level one."""
    code = _code(system)
    entries = {
        entry.field: entry
        for entry in DataOwnership.objects.select_related("system").filter(
            domain=domain, field__in={field, ""}
        )
    }
    entry = entries.get(field) or entries.get("")
    if entry is None or entry.system.code == code:
        return True
    return OwnershipException.objects.filter(
        Q(field=field) | Q(field=""), system__code=code, domain=domain, is_active=True
    ).exists()


def ownership_findings(kind: str, data: dict[str, Any]) -> list[str]:
    """Plain-language findings for the review page: fields a change would write into a system not owning them."""
    findings: list[str] = []
    if kind == ChangeKind.MAPPING:
        systems = sorted(
            {
                c.system.code
                for c in inbound_connectors(data.get("protocol", ""), data.get("message_type", ""))
            }
        )
        seen: set[tuple[str, str, str]] = set()
        for rule in data.get("rules", []):
            found = target_domain_field(data.get("event_type", ""), rule.get("target", ""))
            if not found:
                continue
            for system in systems:
                key = (system, *found)
                if key in seen:
                    continue
                seen.add(key)
                if not ownership_check(system=system, domain=found[0], field=found[1]):
                    findings.append(
                        f"Rule {rule['target']} makes {system} the source of {found[0]}.{found[1]}, "
                        f"which {_owner(*found)} owns."
                    )
    elif kind == ChangeKind.CONNECTOR and data.get("direction") == Direction.OUTBOUND:
        operations = (data.get("config") or {}).get("operations") or {}
        for name in sorted(operations) if isinstance(operations, dict) else []:
            writes = operation_writes(operations, name)
            if writes is None:
                findings.append(
                    f"Operation {name} does not declare what it writes (add writes: [domain, …] to it), "
                    "so ownership cannot be checked for it."
                )
                continue
            findings += [
                f"Operation {name} writes {v.target} into {v.system}, but {v.owner} owns it."
                for v in violations(system=data.get("system", ""), writes=writes)
            ]
    return findings


def _owner(domain: str, field: str) -> str:
    entries = {
        e.field: e
        for e in DataOwnership.objects.select_related("system").filter(domain=domain, field__in={field, ""})
    }
    entry = entries.get(field) or entries.get("")
    return entry.system.code if entry else "nobody"


# What the reference operations write when their config does not say (they predate `writes`). An operation
# that neither declares `writes` nor appears here is flagged in review and not checked at run time.
DEFAULT_WRITES: dict[str, tuple[str, ...]] = {
    "submit_claim": ("claim",),
    "create_claim": ("claim",),
    "post_accrual": ("journal",),
    "post_forecast": ("journal",),  # the expected-reimbursement forecast is a ledger posting
    "post_journal": ("journal",),
    "post_ap_invoice": ("ap_invoice",),
    "post_purchase_order": ("purchase_order",),
}


@dataclass(frozen=True)
class Violation:
    """One write an operation would make into a system that is not the system of record for it."""

    system: str
    domain: str
    field: str
    owner: str

    @property
    def target(self) -> str:
        return f"{self.domain}.{self.field}" if self.field else self.domain

    @property
    def message(self) -> str:
        return f"{self.system} does not own {self.target} ({self.owner} is its system of record)"


def writes_errors(writes: Any) -> list[str]:
    """Problems with an operation's `writes` declaration: a list of "domain" or "domain.field" names."""
    if not isinstance(writes, list) or not all(isinstance(item, str) for item in writes):
        return ["writes must be a list of data domains such as claim or claim.amount"]
    return [
        f"writes: {item!r} is not a domain or domain.field name"
        for item in writes
        if not WRITE_NAME.match(item)
    ]


def operation_writes(operations: dict[str, Any], name: str) -> list[str] | None:
    """What operation `name` writes in its destination: its declared `writes`, else the reference table."""
    spec = operations.get(name)
    if isinstance(spec, dict) and "writes" in spec:
        return list(spec["writes"] or [])
    default = DEFAULT_WRITES.get(name)
    return list(default) if default is not None else None


def violations(*, system: System | str, writes: list[str]) -> list[Violation]:
    """The entries of `writes` that `system` may not write (no ownership, no approved exception)."""
    found = []
    for item in writes:
        domain, _, field = str(item).partition(".")
        if not ownership_check(system=system, domain=domain, field=field):
            found.append(Violation(_code(system), domain, field, _owner(domain, field)))
    return found


def check_delivery(connector: Connector, operation: str) -> list[Violation]:
    """What a delivery of `operation` through `connector` would write into a system that does not own it."""
    operations = (connector.config or {}).get("operations") or {}
    if not isinstance(operations, dict):
        return []
    return violations(system=connector.system.code, writes=operation_writes(operations, operation) or [])


def delivery_block(delivery: Delivery) -> Delivery | None:
    """Refuse a claimed delivery whose operation writes data its destination does not own.

    Checked at send time, not when the delivery is asked for, so that an ownership change or a newly approved
    exception counts for every delivery still waiting. A refused delivery is never sent: it fails permanently
    with an exception item saying in plain words what was refused and how to unblock it. Returns the refused
    delivery as saved (the caller then tells the workflow, as for any failed delivery), or None to go ahead.
    """
    from healthsync.deliveries import OPERATION_LABELS

    found = check_delivery(delivery.connector, delivery.operation)
    if not found:
        return None
    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update().select_related("connector__system").get(pk=delivery.pk)
        )
        system = delivery.connector.system
        what = OPERATION_LABELS.get(delivery.operation, delivery.operation.replace("_", " "))
        owners = System.objects.in_bulk([v.owner for v in found], field_name="code")
        writes = "; ".join(
            f"{v.target} belongs to {owners[v.owner].name if v.owner in owners else v.owner}" for v in found
        )
        reason = (
            f"Not sent to {system.name}: {what} for {delivery.business_key} would write data that "
            f"{system.name} is not the system of record for ({writes}). Ask the governance board for an "
            f"ownership exception or correct what the {delivery.operation} operation writes, then retry."
        )
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
        delivery.last_error = "Blocked by data ownership: " + "; ".join(v.message for v in found)
        delivery.save(update_fields=["status", "next_attempt_at", "last_error"])
        detail = {
            "operation": delivery.operation,
            "connector": delivery.connector.code,
            "blocked_by": "data_ownership",
            "violations": [
                {"system": v.system, "domain": v.domain, "field": v.field, "owner": v.owner} for v in found
            ],
        }
        item = ExceptionItem.objects.open().filter(delivery=delivery).first()
        if item is not None:
            item.kind, item.reason, item.detail = ExceptionKind.DESTINATION_REJECTED, reason, detail
            item.save(update_fields=["kind", "reason", "detail", "updated_at"])
        else:
            ExceptionItem.objects.create(
                kind=ExceptionKind.DESTINATION_REJECTED,
                reason=reason,
                detail=detail,
                workflow=delivery.workflow,
                business_key=delivery.business_key,
                delivery=delivery,
                event=delivery.event,
                message=delivery.event.message if delivery.event_id else None,
            )
    logger.info("delivery %s blocked: its destination does not own what it writes", delivery.pk)
    return delivery
