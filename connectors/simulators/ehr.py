"""A reference EHR for the demo: plays admissions, charges and discharges over MLLP through a real socket.

Every encounter is an ADT^A01 admit, a few DFT^P03 charges and an ADT^A03 discharge a few seconds later.
The business times inside the messages (PV1-44 admit, PV1-45 discharge, FT1 dates) lie in the past days,
so discharge-to-bill times look like a hospital's on the dashboard from the first minute. About
`missing_share` of the discharges lack insurance, a diagnosis, the attending or the financial class, which
is what fills the revenue-cycle exception queue. Names and MRNs are generated; nothing here is real PHI,
and the log still carries counts only.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from connectors.simulators import hl7_builder

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

_GIVEN = [
    "Avery", "Blake", "Casey", "Dana", "Elliot", "Finley", "Harper", "Jordan", "Kendall", "Logan",
    "Morgan", "Parker", "Quinn", "Reese", "Riley", "Rowan", "Sawyer", "Skyler", "Taylor", "Emerson",
]  # fmt: skip
_FAMILY = [
    "Ashford", "Brightwater", "Calloway", "Dunmore", "Everhart", "Fairbanks", "Greywood", "Hollis",
    "Ingram", "Juniper", "Kestrel", "Larkspur", "Merriweather", "Northcott", "Oakhurst", "Pemberton",
]  # fmt: skip
_ATTENDING = [("1234567890", "Osler", "William"), ("2345678901", "Apgar", "Virginia"),
              ("3456789012", "Lister", "Joseph"), ("4567890123", "Blackwell", "Elizabeth")]  # fmt: skip
_PAYERS = [("BCBS01", "Blue Shield (demo)"), ("AETNA01", "Aetna (demo)"), ("MCARE", "Medicare (demo)"),
           ("UHC001", "United (demo)")]  # fmt: skip
_FINANCIAL_CLASSES = ["COM", "MCR", "MCD", "SP"]
_DIAGNOSES = [
    ("I21.4", "Non-ST elevation myocardial infarction"),
    ("J18.9", "Pneumonia, unspecified organism"),
    ("N17.9", "Acute kidney failure, unspecified"),
    ("A41.9", "Sepsis, unspecified organism"),
    ("I50.9", "Heart failure, unspecified"),
    ("K35.80", "Unspecified acute appendicitis"),
    ("E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
]
# Chargemaster code, description, CPT/HCPCS, department, unit price.
_CHARGES = [
    ("300001", "Room and board, semi-private", "", "MED", Decimal("2450.00")),
    ("450010", "Complete blood count", "85025", "LAB", Decimal("48.00")),
    ("450020", "Basic metabolic panel", "80048", "LAB", Decimal("62.00")),
    ("320010", "Chest X-ray, 2 views", "71046", "RAD", Decimal("310.00")),
    ("260010", "IV infusion, first hour", "96365", "PHARM", Decimal("185.00")),
    ("350010", "CT head without contrast", "70450", "RAD", Decimal("1240.00")),
]
_FACILITIES = ["NORTH", "SOUTH"]
# Encounters admitted but not yet discharged; bounded so an absent listener does not grow memory.
MAX_OPEN_ENCOUNTERS = 200
# Which piece a discharge lacks when it is one of the incomplete ones.
_GAPS = ("insurance", "diagnosis", "attending", "financial_class")


@dataclass(order=True)
class _Pending:
    """One encounter's remaining messages, waiting on the heap until `due` (monotonic seconds)."""

    due: float
    seq: int
    label: str = field(compare=False)
    messages: list[tuple[str, str]] = field(compare=False, default_factory=list)
    attempts: int = field(compare=False, default=0)


class EhrSimulator:
    """Sends a steady, realistic patient flow to an MLLP listener and checks every ACK."""

    def __init__(
        self,
        host: str,
        port: int,
        rate_per_s: float = 2.0,
        missing_share: float = 0.2,
        seed: int | None = None,
        *,
        stay_seconds: tuple[float, float] = (2.0, 8.0),
        retry_seconds: float = 5.0,
        ack_timeout: float = 10.0,
        max_encounters: int | None = None,
        report_every: float = 15.0,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if not 0.0 <= missing_share <= 1.0:
            raise ValueError("missing_share must be between 0 and 1")
        self.host = host
        self.port = port
        self.rate_per_s = rate_per_s
        self.missing_share = missing_share
        self.stay_seconds = stay_seconds
        self.retry_seconds = retry_seconds
        self.ack_timeout = ack_timeout
        self.max_encounters = max_encounters
        self.report_every = report_every
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        # Ids must stay unique across demo restarts on the same database, so they carry a run tag.
        self._run_tag = f"{int(time.time()) % 10**7:07d}"
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._heap: list[_Pending] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._down_until = 0.0
        self.encounters_started = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Run `serve_forever` in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="ehr-simulator", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._close()

    @property
    def finished(self) -> bool:
        """True once `max_encounters` were started and every message of them was answered."""
        return (
            self.max_encounters is not None
            and self.encounters_started >= self.max_encounters
            and not self._heap
        )

    def serve_forever(self) -> None:
        """Send until stopped (or, with `max_encounters`, until every encounter is through)."""
        interval = 1.0 / self.rate_per_s
        next_send = time.monotonic()
        last_report = time.monotonic()
        logger.info("EHR simulator sending to %s:%s at %.1f msg/s", self.host, self.port, self.rate_per_s)
        while not self._stop.is_set() and not self.finished:
            now = time.monotonic()
            if now < next_send:
                self._stop.wait(next_send - now)
                continue
            next_send = max(next_send + interval, now - interval)
            self._send_next()
            if now - last_report >= self.report_every:
                last_report = now
                self._report()
        self._report()
        self._close()

    # -- one step ----------------------------------------------------------------------------------

    def _send_next(self) -> None:
        now = time.monotonic()
        if now < self._down_until:
            return
        if not self._heap or self._heap[0].due > now:
            # Nothing is due: admit somebody new, so the flow never runs dry.
            if self.max_encounters is not None and self.encounters_started >= self.max_encounters:
                return
            if len(self._heap) >= MAX_OPEN_ENCOUNTERS:
                return
            heapq.heappush(self._heap, self._new_encounter(now))
        pending = self._heap[0]
        if pending.due > now:
            return
        heapq.heappop(self._heap)
        kind, raw = pending.messages[0]
        outcome = self._exchange(raw)
        self.counts[f"sent.{kind}"] += 1
        self.counts[outcome] += 1
        if outcome == "AA":
            pending.messages.pop(0)
            pending.attempts = 0
            if pending.messages:
                # The discharge waits out the simulated stay; charges follow each other quickly.
                lo, hi = self.stay_seconds
                delay = self._rng.uniform(lo, hi) if pending.messages[0][0] == "A03" else 0.2
                pending.due = now + delay
                heapq.heappush(self._heap, pending)
        elif outcome in {"AE", "error"}:
            # AE means "could not take it now": send the same message again later, keeping the order.
            pending.attempts += 1
            self.counts["resent"] += 1
            pending.due = now + self.retry_seconds * min(pending.attempts, 6)
            heapq.heappush(self._heap, pending)
            if outcome == "error":
                # The listener is away: pause everything rather than open a connection per tick.
                self._down_until = now + self.retry_seconds
        else:
            # AR (or an ACK we cannot read) is final for this message; the rest of the encounter goes on.
            pending.messages.pop(0)
            if pending.messages:
                pending.due = now + 0.2
                heapq.heappush(self._heap, pending)

    def _exchange(self, raw: str) -> str:
        """Send one framed message and return MSA-1 (AA/AE/AR), 'error' or 'unreadable'."""
        try:
            sock = self._connect()
            sock.sendall(START_BLOCK + raw.encode("utf-8") + END_BLOCK)
            ack = self._read_frame(sock)
        except OSError as exc:
            logger.warning("EHR simulator: MLLP exchange failed (%s); will retry", type(exc).__name__)
            self._close()
            return "error"
        return msa_code(ack)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.ack_timeout)
            self._buffer = b""
        return self._sock

    def _read_frame(self, sock: socket.socket) -> bytes:
        while END_BLOCK not in self._buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("listener closed the connection")
            self._buffer += chunk
        frame, _, self._buffer = self._buffer.partition(END_BLOCK)
        return frame.lstrip(START_BLOCK)

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _report(self) -> None:
        logger.info(
            "EHR simulator: encounters=%d sent=%d AA=%d AE=%d AR=%d errors=%d resent=%d",
            self.encounters_started,
            sum(v for k, v in self.counts.items() if k.startswith("sent.")),
            self.counts["AA"],
            self.counts["AE"],
            self.counts["AR"],
            self.counts["error"] + self.counts["unreadable"],
            self.counts["resent"],
        )

    # -- encounters --------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{self._run_tag}{next(self._ids):05d}"

    def _new_encounter(self, now: float) -> _Pending:
        self.encounters_started += 1
        messages = self.encounter_messages()
        return _Pending(due=now, seq=next(self._seq), label=f"encounter-{self.encounters_started}",
                        messages=messages)  # fmt: skip

    def encounter_messages(self, at: datetime | None = None) -> list[tuple[str, str]]:
        """One encounter's messages in order: [("A01", raw), ("P03", raw)..., ("A03", raw)]."""
        rng = self._rng
        now = at or datetime.now(UTC)
        # Discharged 2 h to 6 days ago after a 1-6 day stay: the claim that follows within the minute
        # then shows the discharge-to-bill spread a real hospital has.
        discharged = now - timedelta(hours=rng.uniform(2, 144))
        admitted = discharged - timedelta(hours=rng.uniform(20, 144))
        attending = rng.choice(_ATTENDING)
        payer = rng.choice(_PAYERS)
        diagnosis = rng.choice(_DIAGNOSES)
        patient: dict[str, Any] = {
            "message_time": _ts(now),
            "mrn": self._next_id("MRN"),
            "family_name": rng.choice(_FAMILY),
            "given_name": rng.choice(_GIVEN),
            "birth_date": (now - timedelta(days=rng.randint(18 * 365, 90 * 365))).strftime("%Y%m%d"),
            "sex": rng.choice("FM"),
            "encounter_id": self._next_id("V"),
            "account_number": self._next_id("A"),
            "patient_class": "I",
            "facility": rng.choice(_FACILITIES),
            "attending_id": attending[0],
            "attending_family": attending[1],
            "attending_given": attending[2],
            "financial_class": rng.choice(_FINANCIAL_CLASSES),
            "payer_id": payer[0],
            "plan_id": f"{payer[0]}-PPO",
            "payer_name": payer[1],
            "policy_number": f"POL{rng.randint(10**7, 10**8 - 1)}",
            "diagnoses": [(diagnosis[0], diagnosis[1], "F")],
            "admit_time": _ts(admitted),
            "discharge_time": _ts(discharged),
        }
        flags = {f"include_{gap}": True for gap in _GAPS}
        if rng.random() < self.missing_share:
            gap = rng.choice(_GAPS)
            flags[f"include_{gap}"] = False
            self.counts[f"incomplete.{gap}"] += 1
            # The gap holds for the whole encounter: the admit and the charges must not fill it in.
            if gap == "attending":
                patient.update(attending_id="", attending_family="", attending_given="")
            elif gap == "financial_class":
                patient["financial_class"] = ""
        messages = [("A01", hl7_builder.adt_a01(**patient, **flags, control_id=self._next_id("EHR")))]
        charges = []
        for _ in range(rng.randint(1, 4)):
            code, description, cpt, dept, price = rng.choice(_CHARGES)
            quantity = rng.randint(1, 3)
            service = admitted + (discharged - admitted) * rng.random()
            posted = min(service + timedelta(hours=rng.uniform(1, 40)), now)
            charges.append(
                {
                    "charge_id": self._next_id("T"),
                    "code": code,
                    "description": description,
                    "quantity": str(quantity),
                    "unit_amount": str(price),
                    "amount": str(price * quantity),
                    "service_date": _ts(service),
                    "posting_date": _ts(posted),
                    "cpt": cpt,
                    "department": dept,
                    "type": "CG",
                }
            )
        # Charges arrive in one or two DFT^P03 batches, as charge capture systems send them.
        split = rng.randint(1, len(charges))
        for batch in (charges[:split], charges[split:]):
            if batch:
                raw = hl7_builder.dft_p03(**patient, charges=batch, control_id=self._next_id("EHR"))
                messages.append(("P03", raw))
        messages.append(("A03", hl7_builder.adt_a03(**patient, **flags, control_id=self._next_id("EHR"))))
        return messages


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def msa_code(ack: bytes) -> str:
    """MSA-1 of an ACK frame: AA, AE, AR (CA/CE/CR are folded onto them) or 'unreadable'."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA|"):
            code = segment.split(b"|")[1].decode("ascii", errors="replace").strip().upper()
            return {"CA": "AA", "CE": "AE", "CR": "AR"}.get(
                code, code if code in {"AA", "AE", "AR"} else "unreadable"
            )
    return "unreadable"
