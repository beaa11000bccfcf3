"""Splitting a transaction or batch Bundle into one message per entry.

Each accepted entry is stored as its own message, filed under its own type (``Encounter/finished``) and control
id, so it maps through the same mapping set as the resource posted alone, and a resource already received on
its own is recognised as a duplicate. When the entry refers to other entries of the Bundle (an Encounter's
``subject`` → the Patient entry), the message is a small transaction Bundle: the entry first, then the entries
it refers to, so ``Patient.…`` mapping sources still read the patient. Otherwise it is the resource alone.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_ID = 64  # FHIR id: [A-Za-z0-9-.]{1,64}


def references(node: Any) -> set[str]:
    """Every ``reference`` string anywhere in a resource (``Patient/pat-1``, ``urn:uuid:…``)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str) and reference:
                found.add(reference)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return found


def _names(entry: dict[str, Any]) -> set[str]:
    """What a reference to this entry may say: its fullUrl, or Type/id (bare or at the end of a URL)."""
    resource = entry.get("resource") or {}
    names = {str(entry["fullUrl"])} if entry.get("fullUrl") else set()
    if resource.get("id"):
        names.add(f"{resource.get('resourceType')}/{resource['id']}")
    return names


def _refers_to(refs: set[str], names: set[str]) -> bool:
    return any(ref == name or ref.endswith("/" + name) for ref in refs for name in names)


def entry_message(
    bundle: dict[str, Any], index: int, *, skip: set[int] | frozenset[int] = frozenset()
) -> bytes:
    """The raw message for entry `index`: the resource, or the entry with the entries it refers to."""
    entries = bundle.get("entry") or []
    focus = entries[index]
    refs = references(focus.get("resource"))
    context = [
        entry
        for i, entry in enumerate(entries)
        if i != index and i not in skip and isinstance(entry, dict) and _refers_to(refs, _names(entry))
    ]
    if not context:
        return json.dumps(focus["resource"], separators=(",", ":")).encode()
    bundle_id = str(bundle.get("id") or "bundle")
    body = {
        "resourceType": "Bundle",
        "id": f"{bundle_id[: _MAX_ID - 8]}.{index}",
        "type": "transaction",
        "entry": [focus, *context],
    }
    return json.dumps(body, separators=(",", ":")).encode()
