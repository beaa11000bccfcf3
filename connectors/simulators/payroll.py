"""A reference payroll system: one labour-cost file per monthly pay period, dropped where HealthSync polls.

    drop = PayrollDrop(server.connector_config("/payroll"), secrets=server.secrets())
    drop.tick()              # drops every period not yet dropped, up to the current month; returns their names
    payroll_csv("2026-01")   # the file of one period (the same bytes every time for the same period)

The file is the CSV the payroll connector's layout declares (healthsync.seed_workflows.PAYROLL_LAYOUT) and
workflows/labour.py reads: one row per employee with department, facility, period (YYYY-MM), hours and the
three cost columns (gross pay, employer taxes, benefits). Employees are ids only, never names.

A period's file is the same bytes whenever it is made, so a payroll system that starts again and resends a
period makes a duplicate, not a changed file (which the labour workflow would flag as a mismatch). The drop
starts `months_back` months before the current one, so the demo's first minutes show a few closed periods;
after that there is one new file when the month turns.

Files go through the files connector's own transport (PayerMailbox): written under a temporary dot-name and
renamed, so a poller never takes half a file; a drop that fails (SFTP down) is tried again on the next tick.
"""

from __future__ import annotations

import csv
import io
import logging
import random
from collections.abc import Callable
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from connectors.simulators.rcm import PayerMailbox

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")
EMPLOYER_TAX_RATE = Decimal("0.0765")  # FICA: social security and Medicare
COLUMNS = [
    "employee_id",
    "department",
    "facility",
    "period",
    "regular_hours",
    "overtime_hours",
    "gross_pay",
    "employer_taxes",
    "benefits",
]

# Payroll department: (facility, headcount, hourly rate range, overtime hours range). The EHR simulator's
# facilities are NORTH and SOUTH; shared services (lab, pharmacy) are on the NORTH payroll.
DEPARTMENTS: dict[str, tuple[str, int, tuple[int, int], tuple[int, int]]] = {
    "NURS-MEDSURG": ("NORTH", 14, (42, 55), (0, 16)),
    "NURS-ICU": ("NORTH", 8, (48, 62), (0, 24)),
    "EMERGENCY": ("SOUTH", 10, (45, 58), (0, 20)),
    "LAB": ("NORTH", 6, (30, 38), (0, 8)),
    "RADIOLOGY": ("SOUTH", 5, (33, 42), (0, 8)),
    "PHARMACY": ("NORTH", 4, (58, 70), (0, 4)),
}

# How HealthSync's governed allocation rules split each department's cost to cost centres (percent). The
# demo loads these (load_demo); a department missing here would make the labour workflow raise an exception.
ALLOCATION_RULES: dict[str, list[tuple[str, Decimal]]] = {
    "NURS-MEDSURG": [("CC-NORTH-MEDSURG", Decimal("70")), ("CC-SOUTH-MEDSURG", Decimal("30"))],
    "NURS-ICU": [("CC-NORTH-ICU", Decimal("100"))],
    "EMERGENCY": [("CC-SOUTH-ED", Decimal("100"))],
    "LAB": [("CC-NORTH-LAB", Decimal("65")), ("CC-SOUTH-LAB", Decimal("35"))],
    "RADIOLOGY": [("CC-SOUTH-RAD", Decimal("60")), ("CC-NORTH-RAD", Decimal("40"))],
    "PHARMACY": [("CC-PHARMACY", Decimal("100"))],
}


def _roster() -> list[tuple[str, str, str, Decimal, tuple[int, int]]]:
    """Employee id, department, facility, hourly rate, overtime range: the same staff every period."""
    rng = random.Random("healthsync-payroll-roster")
    staff = []
    number = 1000
    for department, (facility, headcount, (low, high), overtime) in DEPARTMENTS.items():
        for _ in range(headcount):
            number += 1
            rate = Decimal(rng.randint(low * 100, high * 100)) / 100
            staff.append((f"E{number}", department, facility, rate, overtime))
    return staff


def payroll_csv(period: str) -> str:
    """The payroll file of one YYYY-MM period: hours vary by period, the same period always reads the same."""
    rng = random.Random(f"healthsync-payroll-{period}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for employee_id, department, facility, rate, (ot_low, ot_high) in _roster():
        regular = Decimal(rng.choice((152, 160, 168, 176)))
        overtime = Decimal(rng.randint(ot_low, ot_high))
        gross = (regular * rate + overtime * rate * Decimal("1.5")).quantize(CENT, ROUND_HALF_UP)
        taxes = (gross * EMPLOYER_TAX_RATE).quantize(CENT, ROUND_HALF_UP)
        benefits = Decimal(rng.randint(850, 1450)).quantize(CENT)  # health, dental, retirement match
        writer.writerow(
            [employee_id, department, facility, period, regular, overtime, gross, taxes, benefits]
        )
    return out.getvalue()


def file_name(period: str) -> str:
    return f"payroll-{period}.csv"


def _months_before(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


class PayrollDrop:
    """Drops one payroll file per period into a folder or SFTP location, catching up to the current month."""

    def __init__(
        self,
        location: dict[str, Any] | str,
        *,
        secrets: dict[str, str] | None = None,
        months_back: int = 2,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.mailbox = PayerMailbox(location, secrets=secrets)
        self.today = today
        self._next = _months_before(today(), months_back)

    @property
    def dropped(self) -> list[str]:
        """File names delivered so far (a file whose drop failed is not in it until a later tick delivers it)."""
        return self.mailbox.dropped

    def tick(self, *, at_most: int = 1) -> list[str]:
        """Drop up to `at_most` periods that are due (none once the current month is out); returns their names.

        A drop that fails stays pending and is tried again on the next tick, before any new period."""
        before = len(self.mailbox.dropped)
        self.mailbox.flush()
        current = self.today().replace(day=1)
        for _ in range(at_most):
            if self._next > current:
                break
            period = f"{self._next:%Y-%m}"
            self.mailbox.drop(file_name(period), payroll_csv(period))
            self._next = _months_before(self._next, -1)
        return self.mailbox.dropped[before:]
