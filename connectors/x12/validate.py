"""Validation of X12 5010 documents with pyx12 (the implementation guides' maps and code sets).

`validate_x12(text)` runs pyx12's `x12n_document` and returns every problem it found, each with the segment
and its position (segment number in the interchange, as pyx12 counts lines), plus the 999 pyx12 wrote.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pyx12.map_if
import pyx12.params
import pyx12.x12n_document

# pyx12 logs every problem with the segment text (PHI); our own result carries what people need.
logging.getLogger("pyx12").setLevel(logging.CRITICAL)

# One validation at a time: the cached maps below are shared and pyx12 was written for one caller.
_LOCK = threading.Lock()

_load_map_file = pyx12.map_if.load_map_file


@functools.cache
def _cached_map(map_file: str, map_path: str | None) -> Any:
    return _load_map_file(map_file, pyx12.params.params(), map_path)


def _load_map_cached(map_file: str, param: Any, map_path: str | None = None) -> Any:
    # Parsing an implementation guide's XML map costs about a second; the maps are read-only once loaded
    # (the walker keeps its counts apart), so each is loaded once per process.
    return _cached_map(map_file, map_path)


pyx12.map_if.load_map_file = _load_map_cached


@dataclass(frozen=True)
class X12Issue:
    """One problem pyx12 reported: where (segment id, position) and what (code, text)."""

    level: str  # isa, gs, st, segment, element
    code: str
    message: str
    segment: str = ""
    position: int | None = None
    element: str = ""

    def __str__(self) -> str:
        where = self.segment or self.level.upper()
        if self.position is not None:
            where += f" (segment {self.position})"
        if self.element:
            where += f" {self.element}"
        return f"{where}: {self.message} [{self.code}]"


@dataclass
class X12Validation:
    """pyx12's verdict on one document."""

    ok: bool
    issues: list[X12Issue] = field(default_factory=list)
    ack_999: str = ""

    def summary(self, limit: int = 10) -> str:
        return "; ".join(str(issue) for issue in self.issues[:limit])


def validate_x12(raw: str | bytes) -> X12Validation:
    """Validate an X12 interchange against its implementation guide; never raises for bad input."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not text.lstrip().startswith("ISA"):
        return X12Validation(
            ok=False,
            issues=[X12Issue("isa", "ISA", "The document does not start with an ISA segment", "ISA", 1)],
        )
    param = pyx12.params.params()
    ack = io.StringIO()
    errors_json = io.StringIO()
    with _LOCK:
        try:
            ok = pyx12.x12n_document.x12n_document(
                param, io.StringIO(text), fd_997=ack, fd_html=None, fd_json=errors_json
            )
        except Exception as exc:  # pyx12 raises its own errors (and some plain ones) on broken envelopes
            return X12Validation(ok=False, issues=[X12Issue("isa", "ENGINE", str(exc) or type(exc).__name__)])
    issues = _issues(errors_json.getvalue())
    if not ok and not issues:
        # pyx12 gives up before its error tree exists when the ISA itself cannot be read.
        issues = [
            X12Issue(
                "isa",
                "ISA",
                "The ISA segment is malformed (it must be 106 characters of fixed-width fields)",
                "ISA",
                1,
            )
        ]
    return X12Validation(ok=bool(ok) and not issues, issues=issues, ack_999=ack.getvalue())


def _issues(payload: str) -> list[X12Issue]:
    if not payload.strip():
        return []
    doc = json.loads(payload)
    issues: list[X12Issue] = []
    for isa in doc.get("interchanges", []):
        _node_errors(issues, "isa", isa, "ISA")
        for gs in isa.get("groups", []):
            _node_errors(issues, "gs", gs, "GS")
            for st in gs.get("transactions", gs.get("transaction_sets", [])):
                _node_errors(issues, "st", st, "ST")
                for seg in st.get("segments", []):
                    _segment_errors(issues, seg)
    return issues


def _node_errors(issues: list[X12Issue], level: str, node: dict[str, Any], segment: str) -> None:
    for err in node.get("errors", []):
        issues.append(
            X12Issue(
                level,
                str(err.get("code") or err.get("err_cde") or ""),
                str(err.get("message") or err.get("err_str") or ""),
                segment,
                node.get("cur_line"),
            )
        )


def _segment_errors(issues: list[X12Issue], seg: dict[str, Any]) -> None:
    seg_id = str(seg.get("seg_id") or "")
    # cur_line counts segments from the ISA: the position people find in the file.
    position = seg.get("cur_line") or seg.get("seg_count")
    for err in seg.get("errors", []):
        issues.append(
            X12Issue(
                "segment",
                str(err.get("code") or err.get("err_cde") or ""),
                str(err.get("message") or err.get("err_str") or ""),
                seg_id,
                position,
            )
        )
    for ele in seg.get("elements", []):
        for err in ele.get("errors", []):
            issues.append(
                X12Issue(
                    "element",
                    str(err.get("code") or err.get("err_cde") or ""),
                    str(err.get("message") or err.get("err_str") or ""),
                    seg_id,
                    position,
                    _element_ref(seg_id, ele),
                )
            )


def _element_ref(seg_id: str, ele: dict[str, Any]) -> str:
    pos = ele.get("ele_pos")
    if not isinstance(pos, int):
        return ""
    ref = f"{seg_id}{pos:02d}"
    sub = ele.get("subele_pos")
    return f"{ref}-{sub}" if isinstance(sub, int) and sub > 0 else ref
