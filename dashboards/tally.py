"""A mergeable summary of fact rows: counts, sums and hour histograms, so one day's rollup and a live query agree.

Durations are counted per whole hour (rounded), so a median or p90 read from merged days is exact to the hour:
the percentile of the rounded values, with linear interpolation between closest ranks like `percentile()`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# The fact columns a tally reads, in order.
COLUMNS = (
    "status",
    "cancelled",
    "done_at",
    "amount",
    "late_amount",
    "remitted",
    "denied_first",
    "clean",
    "first_pass",
    "sla_met",
    "sla_breached",
    "sla_open",
    "sla_open_deadline",
    "dtb_hours",
    "claim_lag_hours",
    "coding_hours",
    "hold_hours",
    "payment_lag_hours",
    "cycle_hours",
)
HOURS = ("dtb_hours", "claim_lag_hours", "coding_hours", "hold_hours", "payment_lag_hours", "cycle_hours")
COUNTS = (
    "runs",
    "done",
    "blocked",
    "dnfb_count",
    "not_completed",
    "remitted",
    "denied",
    "clean",
    "first_pass",
    "sla_met",
    "sla_breached",
)
SUMS = ("gross", "dnfb", "late")


def hour_key(hours: float) -> int:
    """The whole hour a duration counts under: halves round up, as `Floor(x + 0.5)` does in SQL."""
    return math.floor(hours + 0.5)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    sums: dict[str, Decimal] = field(default_factory=lambda: {name: Decimal("0") for name in SUMS})
    hours: dict[str, Counter[int]] = field(default_factory=lambda: {name: Counter() for name in HOURS})
    # Open SLA steps by their deadline (epoch minute): overdue or pending depends on when the page asks.
    open_due: Counter[int] = field(default_factory=Counter)

    def add_row(self, row: tuple[Any, ...]) -> None:
        (
            status,
            cancelled,
            done_at,
            amount,
            late,
            remitted,
            denied,
            clean,
            first_pass,
            met,
            breached,
            still_open,
            due,
        ) = row[:13]
        c = self.counts
        c["runs"] += 1
        c["done"] += done_at is not None
        c["blocked"] += status == "blocked"
        c["not_completed"] += status != "completed"
        c["remitted"] += bool(remitted)
        c["denied"] += bool(denied)
        c["clean"] += bool(clean)
        c["first_pass"] += bool(first_pass)
        c["sla_met"] += met
        c["sla_breached"] += breached
        if not cancelled:
            self.sums["gross"] += amount or 0
            self.sums["late"] += late or 0
            if done_at is None:
                c["dnfb_count"] += 1
                self.sums["dnfb"] += amount or 0
        if still_open and due is not None:
            self.open_due[int(due.timestamp() // 60)] += still_open
        for name, value in zip(HOURS, row[13:], strict=True):
            if value is not None:
                self.hours[name][hour_key(value)] += 1

    def merge(self, other: Tally) -> Tally:
        self.counts.update(other.counts)
        for name in SUMS:
            self.sums[name] += other.sums[name]
        for name in HOURS:
            self.hours[name].update(other.hours[name])
        self.open_due.update(other.open_due)
        return self

    def overdue(self, now: datetime) -> tuple[int, int]:
        """Open SLA steps past their deadline and still within it."""
        cut = now.timestamp() / 60
        late = sum(n for minute, n in self.open_due.items() if minute < cut)
        return late, sum(self.open_due.values()) - late

    def to_json(self) -> dict[str, Any]:
        return {
            "c": {k: v for k, v in self.counts.items() if v},
            "s": {k: str(v) for k, v in self.sums.items() if v},
            "h": {k: {str(h): n for h, n in v.items()} for k, v in self.hours.items() if v},
            "o": {str(k): v for k, v in self.open_due.items()},
        }

    def merge_json(self, data: dict[str, Any]) -> Tally:
        """Add a stored tally (see `to_json`) without building it first: the page merges ~90 of these."""
        self.counts.update(data.get("c", {}))
        for k, v in data.get("s", {}).items():
            self.sums[k] += Decimal(v)
        for k, v in data.get("h", {}).items():
            # Counter.update of a mapping into an empty Counter is one C-level dict update: the common case
            # (a fresh day's tally) then costs no Python loop over its hundreds of hours.
            self.hours[k].update(dict(zip(map(int, v), v.values(), strict=True)))
        for k, v in data.get("o", {}).items():
            self.open_due[int(k)] += v
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls().merge_json(data)


def histogram_percentile(histogram: Counter[int], pct: float) -> float | None:
    """The pct-th percentile of the values a histogram counts, interpolated like `selectors.percentile`."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = (total - 1) * pct / 100
    low_rank, high_rank = int(rank), min(int(rank) + 1, total - 1)
    low = high = None
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if low is None and seen > low_rank:
            low = value
        if seen > high_rank:
            high = value
            break
    assert low is not None and high is not None
    return low + (high - low) * (rank - low_rank)
