"""Direct-ORM builders for the console tests: a connector, messages, workflow runs and exceptions."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from healthsync.choices import Direction, ExceptionKind, ExceptionStatus, Protocol, SystemKind
from healthsync.models import Connector, ExceptionItem, Message, System
from workflows.models import WorkflowRun, WorkflowStep

PATIENT_NAME = "DOE^JANE"
PATIENT_MRN = "MRN123456"


def _pv1() -> str:
    fields = [""] * 46
    fields[0] = "PV1"
    fields[1], fields[2], fields[3] = "1", "I", "WARD1^101^1"
    fields[19], fields[44], fields[45] = "ENC1001", "20250301080000", "20250301110000"
    return "|".join(fields)


ADT_A03 = (
    "MSH|^~\\&|EPIC|GENHOSP|HEALTHSYNC|GENHOSP|20250301120000||ADT^A03|CTRL0001|P|2.5.1\r"
    f"PID|1||{PATIENT_MRN}^^^GENHOSP^MR||{PATIENT_NAME}||19800101|F\r"
    f"{_pv1()}\r"
)


def connector(code: str = "epic-adt", protocol: str = Protocol.HL7V2) -> Connector:
    system, _ = System.objects.get_or_create(code="epic", defaults={"name": "Epic", "kind": SystemKind.EHR})
    found, _ = Connector.objects.get_or_create(
        code=code,
        defaults={
            "system": system,
            "name": code,
            "direction": Direction.INBOUND,
            "protocol": protocol,
        },
    )
    return found


def message(raw: str = ADT_A03, **fields: Any) -> Message:
    data = raw.encode()
    defaults: dict[str, Any] = {
        "connector": fields.pop("connector", None) or connector(),
        "raw": data,
        "sha256": hashlib.sha256(data).hexdigest(),
        "control_id": "CTRL0001",
        "message_type": "ADT^A03",
        "sender": "EPIC^GENHOSP",
        "business_key": "ENC1001",
    }
    defaults.update(fields)
    return Message.objects.create(**defaults)


def exception_item(**fields: Any) -> ExceptionItem:
    defaults: dict[str, Any] = {
        "kind": ExceptionKind.MISSING_DATA,
        "status": ExceptionStatus.OPEN,
        "reason": "The discharge has no attending physician, so the claim cannot be built.",
        "workflow": "discharge_to_bill",
        "business_key": "ENC1001",
        "amount": Decimal("1250.00"),
    }
    defaults.update(fields)
    return ExceptionItem.objects.create(**defaults)


def billed_run(
    key: str,
    discharged_at: datetime,
    hours_to_bill: float | None,
    *,
    patient_class: str = "I",
    amount: Decimal = Decimal("1000.00"),
    **fields: Any,
) -> WorkflowRun:
    """A discharge-to-bill run discharged at `discharged_at`, with its claim `hours_to_bill` later (None: unbilled)."""
    run = WorkflowRun.objects.create(
        workflow="discharge_to_bill",
        business_key=key,
        patient_class=patient_class,
        amount=amount,
        started_at=discharged_at - timedelta(days=2),
        **fields,
    )
    WorkflowStep.objects.create(run=run, step="discharged", occurred_at=discharged_at)
    if hours_to_bill is not None:
        WorkflowStep.objects.create(
            run=run, step="claim_submitted", occurred_at=discharged_at + timedelta(hours=hours_to_bill)
        )
    return run


def days_ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)
