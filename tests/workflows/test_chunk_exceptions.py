"""Missing-data exceptions raised within a chunk: written at the chunk's end, audited and refreshed as before.

The chunk reads ahead which exceptions its runs have open and writes its new ones in one statement; the audit
log must still get a create entry for each, and a later message of the same encounter, in the same chunk or a
later one, must refresh that exception (an update entry) instead of opening a second one.
"""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connectors.simulators import hl7_builder
from healthsync.choices import ExceptionKind, ExceptionStatus, RunStatus
from healthsync.models import ExceptionItem
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config
from tests.pipeline_support import store
from workflows import discharge_to_bill
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def seeded() -> None:
    seed_reference_config()


def _admit_and_discharge(encounter: str, **missing: bool) -> None:
    store(hl7_builder.adt_a01(encounter_id=encounter, account_number=encounter, **missing))
    store(hl7_builder.adt_a03(encounter_id=encounter, account_number=encounter, **missing))


def _missing_data(encounter: str) -> ExceptionItem:
    return ExceptionItem.objects.get(business_key=encounter, kind=ExceptionKind.MISSING_DATA)


def _audit_actions(item: ExceptionItem) -> list[int]:
    return list(LogEntry.objects.get_for_object(item).order_by("id").values_list("action", flat=True))


def test_an_exception_raised_in_a_chunk_gets_its_audit_create_entry() -> None:
    _admit_and_discharge("V1", include_insurance=False)

    with CaptureQueriesContext(connection) as queries:
        assert process_pending() == 2

    item = _missing_data("V1")
    assert item.status == ExceptionStatus.OPEN
    assert item.detail["missing"] == ["insurance"]
    assert item.message_id is not None and item.event_id is not None
    (entry,) = LogEntry.objects.get_for_object(item)
    assert entry.action == LogEntry.Action.CREATE
    assert entry.changes_dict["id"] == ["None", str(item.pk)]
    assert entry.changes_dict["reason"][1] == item.reason
    run = WorkflowRun.objects.get(workflow=discharge_to_bill.WORKFLOW, business_key="V1")
    assert run.status == RunStatus.BLOCKED
    if connection.vendor == "postgresql":
        inserts = [
            q
            for q in queries.captured_queries
            if q["sql"].startswith('INSERT INTO "healthsync_exceptionitem"')
        ]
        assert len(inserts) == 1


def test_a_later_discharge_in_the_same_chunk_refreshes_the_exception_instead_of_opening_another() -> None:
    _admit_and_discharge("V1", include_insurance=False, include_attending=False)
    # The second discharge brings the attending physician: only the insurance is missing now.
    store(hl7_builder.adt_a03(encounter_id="V1", account_number="V1", include_insurance=False))

    assert process_pending() == 3

    item = _missing_data("V1")
    assert item.detail["missing"] == ["insurance"]
    assert _audit_actions(item) == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]


def test_a_later_chunk_refreshes_the_exception_an_earlier_chunk_opened() -> None:
    _admit_and_discharge("V1", include_insurance=False, include_attending=False)
    assert process_pending() == 2
    store(hl7_builder.adt_a03(encounter_id="V1", account_number="V1", include_insurance=False))

    assert process_pending() == 1

    item = _missing_data("V1")
    assert item.detail["missing"] == ["insurance"]
    assert _audit_actions(item) == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]


def test_a_cancelled_discharge_in_the_same_chunk_withdraws_the_exception_the_discharge_raised() -> None:
    _admit_and_discharge("V1", include_insurance=False)
    store(hl7_builder.adt_a13(encounter_id="V1", account_number="V1"))

    assert process_pending() == 3

    item = _missing_data("V1")
    assert item.status == ExceptionStatus.RESOLVED
    assert item.resolution_note.startswith("Withdrawn")
    assert _audit_actions(item) == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]


def test_each_incomplete_account_of_a_chunk_gets_one_exception_and_one_audit_entry() -> None:
    for encounter in ("V1", "V2", "V3"):
        _admit_and_discharge(encounter, include_insurance=encounter == "V2")

    assert process_pending() == 6

    items = ExceptionItem.objects.filter(kind=ExceptionKind.MISSING_DATA).order_by("business_key")
    assert [item.business_key for item in items] == ["V1", "V3"]
    for item in items:
        assert _audit_actions(item) == [LogEntry.Action.CREATE]
