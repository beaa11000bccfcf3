"""Data ownership: which system may write which domain and field, and the review findings it gives."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from healthsync.choices import ChangeKind, Direction
from healthsync.governance.impact import inbound_connectors, target_domain_field
from healthsync.models import DataOwnership, OwnershipException, System


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
        owned = DataOwnership.objects.select_related("system")
        operations = (data.get("config") or {}).get("operations") or {}
        for name in sorted(operations):
            words = set(str(name).lower().replace("-", "_").split("_"))
            for entry in owned:
                if entry.domain in words and not ownership_check(
                    system=data.get("system", ""), domain=entry.domain, field=entry.field
                ):
                    findings.append(
                        f"Operation {name} writes {entry.domain} into {data.get('system')}, "
                        f"but {entry.system.code} owns it."
                    )
    return findings


def _owner(domain: str, field: str) -> str:
    entries = {
        e.field: e
        for e in DataOwnership.objects.select_related("system").filter(domain=domain, field__in={field, ""})
    }
    entry = entries.get(field) or entries.get("")
    return entry.system.code if entry else "nobody"


def delivery_ownership_violations(
    *, system: System | str, operation: str, payload: dict[str, Any]
) -> list[str]:
    """What a delivery would write into `system` that `system` does not own, for the delivery path to refuse.

    The domains come from the operation's name (submit_claim → claim) and the payload's top-level keys that
    name an owned domain (a "coverage" object → coverage and each of its fields).
    """
    owned = set(DataOwnership.objects.values_list("domain", flat=True))
    words = set(operation.lower().replace("-", "_").split("_"))
    pairs: set[tuple[str, str]] = {(domain, "") for domain in owned & words}
    for key, value in payload.items():
        if key in owned:
            fields = list(value) if isinstance(value, dict) else [""]
            pairs.update((key, str(field)) for field in fields)
    return [
        f"{_code(system)} does not own {domain}{'.' + field if field else ''}"
        for domain, field in sorted(pairs)
        if not ownership_check(system=system, domain=domain, field=field)
    ]
