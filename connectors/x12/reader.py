"""A small X12 reader: segments, envelope checks, and the `get`/`get_all` paths the mapping engine reads.

    doc = parse(raw)               # X12ParseError(message, segment=..., position=...) on a broken envelope
    doc.header.message_type        # "835", "999", "277", "837"
    doc.get("CLP-4")               # CLP04 of the first CLP; "CLP[2]-4" the second; "SV1-1.2" a component
    doc.get_all("CLP[*]-1")        # CLP01 of every CLP

Separators come from the ISA (element at byte 3, component at ISA16, segment after ISA16), so files from
any sender read alike. The envelope is checked the way a receiver must: ISA/IEA and GS/GE control numbers
match, IEA01/GE01 count the groups/transactions, SE01 counts the segments. Position = the segment's number
in the interchange, counting the ISA as 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{1,2})(?:\[(?P<index>\*|\d+)\])?(?:-(?P<el>\d+)(?:\.(?P<comp>\d+))?)?$"
)


class X12ParseError(ValueError):
    """The bytes are not a well-formed X12 interchange; says which segment and where."""

    def __init__(
        self, message: str, *, segment: str = "", position: int | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.segment = segment
        self.position = position
        self.code = code or (f"X12-{segment}" if segment else "X12")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Segment:
    """One segment: its id, its elements (elements[1] is XX01) and its position in the interchange."""

    id: str
    elements: list[str]
    position: int
    component: str = ":"

    def el(self, number: int, component: int | None = None) -> str:
        if number >= len(self.elements):
            return ""
        value = self.elements[number]
        if component is None:
            return value
        parts = value.split(self.component)
        return parts[component - 1] if 0 < component <= len(parts) else ""


@dataclass(frozen=True)
class X12Header:
    """What the store and pipeline want to know about an interchange."""

    control_id: str  # ISA13
    sender: str  # ISA06 (trimmed)
    receiver: str  # ISA08
    message_type: str  # ST01 of the first transaction, e.g. 835
    version: str  # GS08, e.g. 005010X221A1
    usage: str  # ISA15


@dataclass
class X12Document:
    """A parsed interchange; segments in order, plus the header."""

    segments: list[Segment]
    header: X12Header
    element_separator: str = "*"
    component_separator: str = ":"
    _index: dict[str, list[Segment]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for seg in self.segments:
            self._index.setdefault(seg.id, []).append(seg)

    def all(self, seg_id: str) -> list[Segment]:
        return list(self._index.get(seg_id, ()))

    def get(self, path: str) -> str:
        values = self._read(path)
        return values[0] if values else ""

    def get_all(self, path: str) -> list[str]:
        return self._read(path)

    def _read(self, path: str) -> list[str]:
        match = _PATH.match(path.strip())
        if not match:
            raise ValueError(f"{path!r} is not an X12 path such as CLP-4, CLP[*]-1 or SV1-1.2")
        segments = self._index.get(match.group("seg"), [])
        index = match.group("index")
        if index and index != "*":
            position = int(index)
            segments = segments[position - 1 : position] if position > 0 else []
        elif index is None:
            segments = segments[:1]
        el = match.group("el")
        if el is None:
            return [self.element_separator.join([s.id, *s.elements[1:]]) for s in segments]
        comp = match.group("comp")
        return [s.el(int(el), int(comp) if comp else None) for s in segments]


def parse(raw: bytes | str) -> X12Document:
    """Split an interchange into segments and check its envelope; raises X12ParseError."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    text = text.lstrip("\ufeff \r\n\t")
    if not text.startswith("ISA"):
        raise X12ParseError("The document does not start with an ISA segment", segment="ISA", position=1)
    if len(text) < 106:
        raise X12ParseError(
            "The ISA segment is shorter than its fixed 106 characters", segment="ISA", position=1
        )
    element = text[3]
    isa_fields = text[:106].split(element)
    if len(isa_fields) != 17:
        raise X12ParseError(
            f"The ISA segment has {len(isa_fields) - 1} elements instead of 16 "
            "(its fields are fixed width: check the padding)",
            segment="ISA",
            position=1,
        )
    component = isa_fields[16][0]
    terminator = text[105]
    if terminator.isalnum() or terminator == element:
        raise X12ParseError(
            "The ISA segment is not followed by a segment terminator", segment="ISA", position=1
        )
    segments: list[Segment] = []
    for number, chunk in enumerate(
        (c.strip("\r\n") for c in text.split(terminator) if c.strip("\r\n \t")), start=1
    ):
        elements = chunk.split(element)
        seg_id = elements[0].strip()
        if not re.fullmatch(r"[A-Z][A-Z0-9]{1,2}", seg_id):
            raise X12ParseError(
                f"Segment {number} has no valid segment id", segment=seg_id[:3], position=number
            )
        segments.append(Segment(seg_id, [seg_id, *elements[1:]], number, component))
    _check_envelope(segments)
    isa = segments[0]
    gs = next((s for s in segments if s.id == "GS"), None)
    st = next((s for s in segments if s.id == "ST"), None)
    if gs is None or st is None:
        missing = "GS" if gs is None else "ST"
        raise X12ParseError(
            f"The interchange holds no {missing}: nothing to read", segment=missing, position=2
        )
    header = X12Header(
        control_id=isa.el(13).strip(),
        sender=isa.el(6).strip(),
        receiver=isa.el(8).strip(),
        message_type=st.el(1),
        version=gs.el(8),
        usage=isa.el(15),
    )
    return X12Document(segments, header, element, component)


def _check_envelope(segments: list[Segment]) -> None:
    isa: Segment | None = None
    gs: Segment | None = None
    st: Segment | None = None
    groups = transactions = in_transaction = 0
    for seg in segments:
        if seg.id == "ISA":
            if isa is not None:
                raise X12ParseError(
                    "A second ISA starts before the IEA", segment="ISA", position=seg.position
                )
            isa, groups = seg, 0
        elif isa is None:
            raise X12ParseError(f"{seg.id} appears before the ISA", segment=seg.id, position=seg.position)
        elif seg.id == "GS":
            if gs is not None:
                raise X12ParseError("A GS starts before the previous GE", segment="GS", position=seg.position)
            gs, transactions = seg, 0
            groups += 1
        elif seg.id == "ST":
            if gs is None or st is not None:
                raise X12ParseError(
                    "ST outside a GS/GE group or before an SE", segment="ST", position=seg.position
                )
            st, in_transaction = seg, 1
            transactions += 1
        elif seg.id == "SE":
            if st is None:
                raise X12ParseError("SE without an ST", segment="SE", position=seg.position)
            in_transaction += 1
            if seg.el(2) != st.el(2):
                raise X12ParseError(
                    f"SE02 {seg.el(2)!r} does not match ST02 {st.el(2)!r}",
                    segment="SE",
                    position=seg.position,
                )
            if seg.el(1) != str(in_transaction):
                raise X12ParseError(
                    f"SE01 says {seg.el(1) or 'nothing'} segments but the transaction has {in_transaction}",
                    segment="SE",
                    position=seg.position,
                )
            st = None
        elif seg.id == "GE":
            if gs is None or st is not None:
                raise X12ParseError("GE without its GS or before the SE", segment="GE", position=seg.position)
            if seg.el(2) != gs.el(6):
                raise X12ParseError(
                    f"GE02 {seg.el(2)!r} does not match GS06 {gs.el(6)!r}",
                    segment="GE",
                    position=seg.position,
                )
            if seg.el(1) != str(transactions):
                raise X12ParseError(
                    f"GE01 says {seg.el(1) or 'nothing'} transactions but the group has {transactions}",
                    segment="GE",
                    position=seg.position,
                )
            gs = None
        elif seg.id == "IEA":
            if gs is not None:
                raise X12ParseError("IEA before the GE", segment="IEA", position=seg.position)
            if seg.el(2) != isa.el(13):
                raise X12ParseError(
                    f"IEA02 {seg.el(2)!r} does not match ISA13 {isa.el(13)!r}",
                    segment="IEA",
                    position=seg.position,
                )
            if seg.el(1) != str(groups):
                raise X12ParseError(
                    f"IEA01 says {seg.el(1) or 'nothing'} groups but the interchange has {groups}",
                    segment="IEA",
                    position=seg.position,
                )
            if seg is not segments[-1]:
                after = segments[segments.index(seg) + 1]
                raise X12ParseError(
                    "Segments follow the IEA (one interchange per document)",
                    segment=after.id,
                    position=after.position,
                )
            return
        elif st is not None:
            in_transaction += 1
        else:
            raise X12ParseError(
                f"{seg.id} is outside any ST/SE transaction", segment=seg.id, position=seg.position
            )
    last = segments[-1]
    missing = "SE" if st is not None else "GE" if gs is not None else "IEA"
    raise X12ParseError(
        f"The interchange ends without its {missing}", segment=missing, position=last.position + 1
    )
