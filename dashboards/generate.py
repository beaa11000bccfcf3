"""Synthetic data at hospital-network scale, for the dashboards' benchmark: `manage.py generate_scale`.

Each encounter becomes a discharge-to-bill run with its steps as the real workflow records them (admitted,
charges, discharged, documentation, coding, bill hold, claim ready/submitted/accepted or rejected, paid or
denied, cash posted, sometimes a late charge), exactly `events_per_encounter` canonical events (the steps' own
events, then further charge.posted events), a submit_claim delivery per submitted claim, an exception for
about one encounter in 25, and one remittance run per payer, facility and week. Times spread over `years`
ending now, so recent encounters are still in progress (DNFB, unpaid claims) as in a live system.

On PostgreSQL the rows go in with COPY (psycopg 3 `cursor.copy`) a chunk of encounters per transaction;
elsewhere (SQLite, for the tests) with executemany. Ids are taken past the current maximum and the
sequences moved on afterwards, so do not run it while the worker writes the same tables.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Max
from django.utils import timezone

from healthsync.choices import (
    DeliveryStatus,
    Direction,
    ExceptionKind,
    ExceptionStatus,
    Protocol,
    RunStatus,
    SystemKind,
)
from healthsync.models import CanonicalEvent, Connector, Delivery, ExceptionItem, System
from workflows.models import WorkflowRun, WorkflowStep

KEY_PREFIX = "SCALE"
DTB = "discharge_to_bill"
REMITTANCE = "remittance"

FACILITIES = (("GEN_HOSP", 30), ("NORTH_MC", 20), ("SOUTH_MC", 18), ("EAST_CLINIC", 12), ("WEST_MC", 12),
              ("CHILDRENS", 8))  # fmt: skip
PAYERS = (("Medicare", 35), ("Medicaid", 20), ("Blue Cross", 15), ("UnitedHealthcare", 10), ("Aetna", 8),
          ("Cigna", 5), ("Self-pay", 7))  # fmt: skip
# PV1-2 patient class: inpatient, outpatient, emergency, recurring.
CLASSES = (("I", 15), ("O", 55), ("E", 25), ("R", 5))
# Typical length of stay (hours, low-high) and gross charges (dollars, median) per class.
STAY_HOURS = {"I": (24.0, 240.0), "O": (1.0, 6.0), "E": (2.0, 12.0), "R": (1.0, 4.0)}
CHARGES = {"I": 24_000.0, "O": 1_400.0, "E": 3_200.0, "R": 600.0}
EXCEPTION_KINDS = ((ExceptionKind.MISSING_DATA, 40), (ExceptionKind.DESTINATION_REJECTED, 20),
                   (ExceptionKind.SLA_BREACHED, 20), (ExceptionKind.MAPPING_FAILED, 8),
                   (ExceptionKind.DESTINATION_DOWN, 7), (ExceptionKind.MISMATCH, 5))  # fmt: skip
EXCEPTION_SHARE = 0.04
REJECT_SHARE = 0.03
DENIAL_SHARE = 0.09
LATE_CHARGE_SHARE = 0.04
EVENT_TYPES = {
    "admitted": "encounter.admitted",
    "charges_posted": "charge.posted",
    "discharged": "encounter.discharged",
    "documentation_completed": "documentation.completed",
    "coding_completed": "coding.completed",
    "bill_hold_released": "account.hold_released",
    "claim_ready": "claim.ready",
    "claim_submitted": "claim.submitted",
    "claim_rejected": "claim.rejected",
    "claim_accepted": "claim.accepted",
    "late_charge_posted": "charge.posted",
    "paid": "claim.paid",
    "denied": "claim.denied",
    "cash_posted": "remittance.posted",
}
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _weighted(pairs: Sequence[tuple[Any, int]]) -> tuple[list[Any], list[int]]:
    values = [value for value, _ in pairs]
    cumulative, total = [], 0
    for _, weight in pairs:
        total += weight
        cumulative.append(total)
    return values, cumulative


@dataclass
class Table:
    """Rows of one model bound for the database: the columns written, the rows, and how many so far."""

    model: type[models.Model]
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    written: int = 0
    seconds: float = 0.0

    @property
    def fields(self) -> list[models.Field]:
        by_column = {f.column: f for f in self.model._meta.concrete_fields}
        return [by_column[c] for c in self.columns]


@dataclass
class ScaleResult:
    """What a generation wrote: rows per table, seconds, and rows per second overall."""

    encounters: int
    rows: dict[str, int]
    seconds: float
    rollup_seconds: float | None = None
    rollup_rows: int | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "encounters": self.encounters,
            "rows": self.rows,
            "total_rows": self.total_rows,
            "seconds": round(self.seconds, 2),
            "rows_per_second": round(self.total_rows / self.seconds) if self.seconds else None,
            "rollup_seconds": None if self.rollup_seconds is None else round(self.rollup_seconds, 2),
            "rollup_rows": self.rollup_rows,
        }


def _next_id(model: type[models.Model]) -> int:
    """The first id the generated rows take: past every stored row and, on PostgreSQL, past every id the
    sequence has handed out (a worker may hold some it has not written yet)."""
    top = (model.objects.aggregate(top=Max("pk"))["top"] or 0) + 1
    if connection.vendor != "postgresql":
        return top
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [model._meta.db_table])
        return max(top, cursor.fetchone()[0])


def _scale_connector() -> Connector:
    """The outbound claims connector the generated submit_claim deliveries went through."""
    system, _ = System.objects.get_or_create(
        code="scale-rcm", defaults={"name": "Scale RCM (generated)", "kind": SystemKind.RCM}
    )
    connector, _ = Connector.objects.get_or_create(
        code="scale-rcm-claims",
        defaults={
            "system": system,
            "name": "Scale claims (generated)",
            "direction": Direction.OUTBOUND,
            "protocol": Protocol.REST,
            "config": {},
            "is_enabled": False,
        },
    )
    return connector


class Generator:
    """Builds the rows of a chunk of encounters; `generate()` drives it and writes the chunks."""

    def __init__(
        self, *, encounters: int, events_per_encounter: int, years: float, seed: int, now: datetime
    ) -> None:
        self.encounters = encounters
        self.events_per_encounter = events_per_encounter
        self.now = now
        self.start = now - timedelta(days=365 * years)
        self.span_seconds = (now - self.start).total_seconds()
        self.random = random.Random(seed)
        # One tag per generation keeps keys unique if it is run twice on one database.
        self.tag = uuid.uuid4().hex[:8]
        # Event ids: a fresh random high part per generation, a counter below it (ordered inserts into the index).
        self.uuid_base = uuid.uuid4().int & ~((1 << 40) - 1)
        self.facilities = _weighted(FACILITIES)
        self.payers = _weighted(PAYERS)
        self.classes = _weighted(CLASSES)
        self.kinds = _weighted(EXCEPTION_KINDS)
        self.connector_id = _scale_connector().pk
        self.run_id = _next_id(WorkflowRun)
        self.step_id = _next_id(WorkflowStep)
        self.delivery_id = _next_id(Delivery)
        self.exception_id = _next_id(ExceptionItem)
        self.event_n = 0
        self.tables = {
            "runs": Table(WorkflowRun, ["id", "workflow", "business_key", "status", "step", "context", "facility",
                                        "patient_class", "payer", "amount", "started_at", "updated_at",
                                        "completed_at"]),
            "steps": Table(WorkflowStep, ["id", "run_id", "step", "occurred_at", "recorded_at", "event_id",
                                          "delivery_id", "note"]),
            "events": Table(CanonicalEvent, ["id", "type", "source", "subject", "occurred_at", "recorded_at",
                                             "facility", "idempotency_key", "source_ref", "correlation", "data"]),
            "deliveries": Table(Delivery, ["id", "connector_id", "operation", "idempotency_key", "payload",
                                           "status", "attempts", "last_error", "external_id", "workflow",
                                           "business_key", "event_id", "created_at", "sent_at",
                                           "succeeded_at"]),
            "exceptions": Table(ExceptionItem, ["id", "kind", "status", "reason", "detail", "workflow",
                                                "business_key", "facility", "payer", "amount", "sla_due_at",
                                                "created_at", "updated_at", "resolved_at", "resolution_note"]),
        }  # fmt: skip

    def pick(self, weighted: tuple[list[Any], list[int]]) -> Any:
        values, cumulative = weighted
        point = self.random.random() * cumulative[-1]
        for value, edge in zip(values, cumulative, strict=True):
            if point < edge:
                return value
        return values[-1]

    def hours(self, low: float, high: float) -> timedelta:
        return timedelta(hours=self.random.uniform(low, high))

    def event_id(self) -> uuid.UUID:
        self.event_n += 1
        return uuid.UUID(int=self.uuid_base | self.event_n)

    def timeline(self, patient_class: str, admitted: datetime) -> list[tuple[str, datetime]]:
        """The steps an encounter reached by now, in order, with their business times."""
        rnd = self.random.random
        steps = [("admitted", admitted)]
        low, high = STAY_HOURS[patient_class]
        discharged = admitted + self.hours(low, high)
        steps.append(("charges_posted", admitted + (discharged - admitted) * rnd()))
        steps.append(("discharged", discharged))
        inpatient = patient_class == "I"
        documented = discharged + self.hours(2, 40 if inpatient else 12)
        steps.append(("documentation_completed", documented))
        coded = documented + self.hours(6, 80 if inpatient else 30)
        steps.append(("coding_completed", coded))
        ready = coded + self.hours(0.5, 4)
        if inpatient:
            # Inpatient accounts wait out the bill hold (3-5 days after discharge) before the claim drops.
            released = max(coded, discharged + self.hours(72, 120))
            steps.append(("bill_hold_released", released))
            ready = released + self.hours(0.5, 4)
        steps.append(("claim_ready", ready))
        submitted = ready + (self.hours(0.2, 6) if rnd() < 0.85 else self.hours(24, 120))
        steps.append(("claim_submitted", submitted))
        if rnd() < REJECT_SHARE:
            steps.append(("claim_rejected", submitted + self.hours(2, 48)))
        else:
            accepted = submitted + self.hours(4, 72)
            steps.append(("claim_accepted", accepted))
            if rnd() < LATE_CHARGE_SHARE:
                steps.append(("late_charge_posted", submitted + self.hours(24, 240)))
            remitted = accepted + self.hours(14 * 24, 45 * 24)
            if rnd() < DENIAL_SHARE:
                steps.append(("denied", remitted))
            else:
                steps.append(("paid", remitted))
                steps.append(("cash_posted", remitted + self.hours(4, 48)))
        return [(name, at) for name, at in steps if at <= self.now]

    def encounter(self, n: int) -> None:
        rnd = self.random
        key = f"{KEY_PREFIX}-{self.tag}-{n:08d}"
        facility, payer = self.pick(self.facilities), self.pick(self.payers)
        patient_class = self.pick(self.classes)
        admitted = self.start + timedelta(seconds=rnd.random() * self.span_seconds)
        steps = self.timeline(patient_class, admitted)
        amount = Decimal(f"{CHARGES[patient_class] * rnd.lognormvariate(0, 0.6):.2f}")
        reached = [name for name, _ in steps]
        last_name, last_at = steps[-1]
        charges = {f"{key}-C1": {"amount": str(amount), "type": "CG", "late": False}}
        if "late_charge_posted" in reached:
            charges[f"{key}-C2"] = {"amount": f"{float(amount) * 0.05:.2f}", "type": "CG", "late": True}
        context = {"account_number": f"A{n:09d}", "patient": {"mrn": f"MRN{n:09d}"}, "charges": charges}

        exception_at = None
        if rnd.random() < EXCEPTION_SHARE:
            exception_at = steps[rnd.randrange(len(steps))][1] + self.hours(0.1, 6)
            exception_at = min(exception_at, self.now)
        exception_open = exception_at is not None and (
            self.now - exception_at < 7 * DAY or rnd.random() < 0.1
        )
        status = (
            RunStatus.BLOCKED
            if exception_open or last_name == "claim_rejected"
            else RunStatus.COMPLETED
            if last_name in ("cash_posted", "denied")
            else RunStatus.ACTIVE
        )
        run_id = self.run_id
        self.run_id += 1
        completed = last_at if status == RunStatus.COMPLETED else None
        self.tables["runs"].rows.append(
            (run_id, DTB, key, status, last_name, json.dumps(context), facility, patient_class, payer, amount,
             admitted, last_at, completed)
        )  # fmt: skip

        events = self.tables["events"].rows
        wanted = self.events_per_encounter
        correlation = json.dumps({"encounter": key, "account": context["account_number"]})
        submit_event = None
        for index, (name, at) in enumerate(steps):
            event_id = None
            if index < wanted:
                event_id = self.event_id()
                source = "scale-ehr" if index < 5 else "scale-rcm"
                events.append(
                    (event_id, EVENT_TYPES[name], source, key, at, at + timedelta(seconds=2), facility,
                     f"{key}:{name}", f"{key}-{index}", correlation, "{}")
                )  # fmt: skip
            if name == "claim_submitted":
                submit_event = event_id
            delivery_id = None
            if name == "claim_submitted":
                delivery_id = self.delivery_id
                self.delivery_id += 1
                claim_id = f"CLM{n:09d}"
                self.tables["deliveries"].rows.append(
                    (delivery_id, self.connector_id, "submit_claim", f"{key}:submit_claim",
                     json.dumps({"claim": claim_id, "payer": payer, "amount": str(amount)}), DeliveryStatus.SUCCEEDED,
                     1, "", claim_id, DTB, key, submit_event, at, at, at)
                )  # fmt: skip
            self.tables["steps"].rows.append(
                (self.step_id, run_id, name, at, at + timedelta(seconds=2), event_id, delivery_id, "")
            )
            self.step_id += 1
        # Further charge lines make up the events an encounter carries (several charges per stay is the norm).
        for extra in range(len(steps), wanted):
            at = steps[1][1] if len(steps) > 1 else admitted
            events.append(
                (self.event_id(), "charge.posted", "scale-ehr", key, at, at + timedelta(seconds=2), facility,
                 f"{key}:charge:{extra}", f"{key}-{extra}", correlation, '{"type": "CG"}')
            )  # fmt: skip

        if exception_at is not None:
            kind = self.pick(self.kinds)
            resolved_at = None if exception_open else exception_at + self.hours(1, 96)
            self.tables["exceptions"].rows.append(
                (self.exception_id, kind, ExceptionStatus.OPEN if exception_open else ExceptionStatus.RESOLVED,
                 f"Generated {kind.replace('_', ' ')} on {last_name}", "{}", DTB, key, facility, payer, amount,
                 exception_at + DAY, exception_at, resolved_at or exception_at, resolved_at,
                 "" if exception_open else "Fixed and retried")
            )  # fmt: skip
            self.exception_id += 1

    def remittances(self) -> None:
        """One 835 per payer, facility and week: a remittance run received then posted."""
        week = self.start
        n = 0
        while week < self.now:
            for facility, _ in FACILITIES:
                for payer, _ in PAYERS:
                    if payer == "Self-pay":
                        continue
                    n += 1
                    key = f"{KEY_PREFIX}-{self.tag}-TRN{n:07d}"
                    received = week + self.hours(0, 7 * 24)
                    posted = received + self.hours(2, 60)
                    steps = [
                        (name, at)
                        for name, at in (("received", received), ("posted", posted))
                        if at <= self.now
                    ]
                    if not steps:
                        continue
                    done = len(steps) == 2
                    amount = Decimal(f"{self.random.uniform(5_000, 400_000):.2f}")
                    run_id = self.run_id
                    self.run_id += 1
                    self.tables["runs"].rows.append(
                        (run_id, REMITTANCE, key, RunStatus.COMPLETED if done else RunStatus.ACTIVE, steps[-1][0],
                         "{}", facility, "", payer, amount, received, steps[-1][1], posted if done else None)
                    )  # fmt: skip
                    for name, at in steps:
                        self.tables["steps"].rows.append((self.step_id, run_id, name, at, at, None, None, ""))
                        self.step_id += 1
            week += 7 * DAY


def _convert(table: Table) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """Python values as the database driver wants them (SQLite: Django's adaptation per field)."""
    fields = table.fields

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        out = []
        for f, value in zip(fields, row, strict=True):
            if value is None or isinstance(f, models.JSONField):
                out.append(value)
            else:
                out.append(f.get_db_prep_value(value, connection, prepared=False))
        return tuple(out)

    return convert


def _write(table: Table) -> None:
    if not table.rows:
        return
    # Table and column names come from the models' meta, never from input: the f-strings below are safe.
    started = time.perf_counter()
    name = connection.ops.quote_name(table.model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in table.columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            raw = cursor.cursor  # psycopg 3's own cursor: Django's wrapper has no copy()
            with raw.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
                for row in table.rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(table.columns))
            convert = _convert(table)
            cursor.executemany(
                f"INSERT INTO {name} ({columns}) VALUES ({marks})",  # noqa: S608
                [convert(r) for r in table.rows],
            )
    table.written += len(table.rows)
    table.seconds += time.perf_counter() - started
    table.rows.clear()


def _reset_sequences(tables: Iterable[Table]) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for table in tables:
            if table.model is CanonicalEvent:
                continue  # uuid keys: no sequence
            name = table.model._meta.db_table
            quoted = connection.ops.quote_name(name)
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT MAX(id) FROM {quoted}))",  # noqa: S608
                [name],
            )
            # Fresh statistics, or the planner reads a million-row table as the empty one it was.
            cursor.execute(f"ANALYZE {quoted}")


def generate(
    *,
    encounters: int,
    events_per_encounter: int = 10,
    years: float = 2.0,
    chunk: int = 20_000,
    seed: int = 7,
    now: datetime | None = None,
    rebuild_rollups: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ScaleResult:
    """Load `encounters` synthetic encounters (and everything around them); returns what was written."""
    if encounters < 1 or events_per_encounter < 1 or chunk < 1 or years <= 0:
        raise ValueError("encounters, events per encounter and chunk must be ≥ 1 and years > 0")
    started = time.perf_counter()
    generator = Generator(
        encounters=encounters,
        events_per_encounter=events_per_encounter,
        years=years,
        seed=seed,
        now=now or timezone.now(),
    )
    order = ["runs", "events", "deliveries", "steps", "exceptions"]  # referenced rows before their referrers
    for first in range(0, encounters, chunk):
        for n in range(first, min(first + chunk, encounters)):
            generator.encounter(n)
        if first + chunk >= encounters:
            generator.remittances()
        with transaction.atomic():
            for name in order:
                _write(generator.tables[name])
        if progress:
            done = min(first + chunk, encounters)
            elapsed = time.perf_counter() - started
            rows = sum(t.written for t in generator.tables.values())
            progress(f"{done:,}/{encounters:,} encounters, {rows:,} rows, {rows / elapsed:,.0f} rows/s")
    _reset_sequences(generator.tables.values())
    result = ScaleResult(
        encounters=encounters,
        rows={name: table.written for name, table in generator.tables.items()},
        seconds=time.perf_counter() - started,
    )
    if rebuild_rollups:
        rebuild = _rollup_rebuild()
        if rebuild is not None:
            rollup_started = time.perf_counter()
            result.rollup_rows = rebuild()
            result.rollup_seconds = time.perf_counter() - rollup_started
    return result


def _rollup_rebuild() -> Callable[[], int] | None:
    """dashboards.rollups.rebuild when the rollup tables exist in this build."""
    try:
        from dashboards import rollups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(rollups, "rebuild", None)
