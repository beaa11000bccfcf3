"""A fast HL7 v2 reader for the hot path.

hl7apy validates conformance but parses about ten messages a second; this reader splits on the message's
own encoding characters (MSH-1/MSH-2), handles repetitions, components, sub-components and escape sequences,
and accepts CR, LF or CRLF segment endings. It is checked field by field against hl7apy in the tests.

Paths read like the ones integration engineers write: ``PID-3.1`` (first repetition, first component),
``PID-3[2].1`` (second repetition), ``DG1[2]-3.1`` (second DG1 segment), ``DG1[*]-3.1`` / ``PID-3[*].1``
(every occurrence, with :meth:`HL7Message.get_all`), ``MSH-9.2``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_NAMES_SEEN: set[str] = set()  # segment names already found valid
_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\*|\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\*|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)
_CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "CP1252": "cp1252",
}
# Control characters cannot appear literally in a field (CR ends a segment), so escape() writes them as hex.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class HL7ParseError(ValueError):
    """The bytes are not a usable HL7 v2 message. `code` is an HL7 table 0357 error code."""

    def __init__(self, message: str, *, code: str = "100") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, value: str) -> str:
        if self.escape not in value:
            return value
        return _unescape(value, self)


def _unescape(value: str, enc: Encoding) -> str:
    out: list[str] = []
    i = 0
    esc = enc.escape
    while i < len(value):
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:  # a lone escape character is taken literally
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(enc.field)
        elif seq == "S":
            out.append(enc.component)
        elif seq == "T":
            out.append(enc.subcomponent)
        elif seq == "R":
            out.append(enc.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq.startswith("X") and len(seq) > 1:
            try:
                data = bytes.fromhex(seq[1:])
            except ValueError:
                out.append(esc + seq + esc)
                continue
            # \X..\ carries bytes in the message's character set: UTF-8 when they decode as such, else Latin-1.
            try:
                out.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(data.decode("latin-1"))
        elif seq == ".br":
            out.append("\n")
        elif seq in {"H", "N"}:  # highlighting on/off carries no data
            continue
        else:
            out.append(esc + seq + esc)
    return "".join(out)


@dataclass(frozen=True)
class Header:
    """The MSH fields the listener needs before it stores and acknowledges a message."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_type: str  # e.g. ADT^A03 (MSH-9.1^MSH-9.2)
    control_id: str
    processing_id: str
    version: str
    charset: str
    accept_ack_type: str
    application_ack_type: str
    encoding: Encoding

    @property
    def sender(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}"


def decode(raw: bytes) -> tuple[str, str]:
    """Decode bytes in the character set MSH-18 names; returns (text, python codec)."""
    # latin-1 maps every byte, so it is safe for reading MSH-18 before the real decode.
    probe = raw[:1024].decode("latin-1")
    charset = ""
    start = probe.find("MSH")
    if start != -1 and len(probe) > start + 4:
        sep = probe[start + 3]
        first_line = _SEGMENT_SPLIT.split(probe[start:], maxsplit=1)[0]
        fields = first_line.split(sep)
        if len(fields) > 17:
            charset = fields[17].split(probe[start + 4] if len(probe) > start + 4 else "^")[0].strip().upper()
    codec = _CHARSETS.get(charset, "utf-8")
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError:
        if codec == "utf-8":
            # Senders that leave MSH-18 empty and send Latin-1 anyway are common; do not reject them.
            return raw.decode("latin-1"), "latin-1"
        raise HL7ParseError(f"Message is not valid {charset or codec} text", code="102") from None


class HL7Message:
    """A parsed HL7 v2 message: segments split into fields, read by path."""

    def __init__(self, text: str) -> None:
        self.text = text
        lines = [line for line in _SEGMENT_SPLIT.split(text.strip("\x0b\x1c\r\n ")) if line.strip()]
        if not lines or not lines[0].startswith("MSH"):
            raise HL7ParseError("The message does not start with an MSH segment", code="100")
        msh = lines[0]
        if len(msh) < 8:
            raise HL7ParseError("The MSH segment is too short to hold its encoding characters", code="102")
        field_sep = msh[3]
        enc_chars = msh[4 : msh.find(field_sep, 4) if field_sep in msh[4:] else len(msh)]
        if field_sep.isalnum() or len(enc_chars) < 3 or len(set(enc_chars + field_sep)) != len(enc_chars) + 1:
            raise HL7ParseError(f"MSH-1/MSH-2 encoding characters are invalid: {msh[3:8]!r}", code="102")
        self.encoding = Encoding(
            field=field_sep,
            component=enc_chars[0],
            repetition=enc_chars[1],
            escape=enc_chars[2] if len(enc_chars) > 2 else "\\",
            subcomponent=enc_chars[3] if len(enc_chars) > 3 else "&",
        )
        self.segments: list[list[str]] = []
        # Segments by name, so a path finds its segment without scanning the message.
        self._by_name: dict[str, list[list[str]]] = {}
        for line in lines:
            fields = line.split(field_sep)
            name = fields[0]
            if name not in _NAMES_SEEN:
                if _NAME.fullmatch(name) is None:
                    raise HL7ParseError(f"Segment {name[:10]!r} has an invalid name", code="100")
                if len(_NAMES_SEEN) < 1000:
                    _NAMES_SEEN.add(name)
            if name == "MSH":
                # MSH-1 is the field separator itself, so MSH-n sits at split index n-1: re-align.
                fields = ["MSH", field_sep, *fields[1:]]
            self.segments.append(fields)
            self._by_name.setdefault(name, []).append(fields)

    # Reading ------------------------------------------------------------------------------------------

    def segment_names(self) -> list[str]:
        return [fields[0] for fields in self.segments]

    def occurrences(self, name: str) -> list[list[str]]:
        return list(self._by_name.get(name, ()))

    def get(self, path: str) -> str:
        """The first value at `path`, unescaped; '' when absent."""
        values = self._read(path, first_only=True)
        return values[0] if values else ""

    def get_all(self, path: str) -> list[str]:
        """Every non-empty value at `path`, expanding `[*]` on segments and repetitions."""
        return [value for value in self._read(path, first_only=False) if value != ""]

    def _read(self, path: str, *, first_only: bool) -> list[str]:
        seg, occ, f, rep, comp, sub = _path_spec(path)
        segments = self._by_name.get(seg, _NO_SEGMENTS)[occ]
        enc = self.encoding
        if f is None:
            return [enc.field.join(s) for s in segments]
        # MSH-1 and MSH-2 hold the encoding characters themselves: never split or unescape them.
        literal = seg == "MSH" and f in (1, 2)
        esc = enc.escape
        out: list[str] = []
        for fields in segments:
            if f >= len(fields):
                continue
            raw_field = fields[f]
            if literal:
                out.append(raw_field)
                continue
            for value in raw_field.split(enc.repetition)[rep]:
                if comp is not None:
                    parts = value.split(enc.component)
                    value = parts[comp] if comp < len(parts) else ""
                    if sub is not None:
                        subs = value.split(enc.subcomponent)
                        value = subs[sub] if sub < len(subs) else ""
                out.append(_unescape(value, enc) if esc in value else value)
                if first_only:
                    return out
        return out

    @cached_property
    def header(self) -> Header:
        # Read straight from the MSH fields: the listener needs this for every message, paths cost more.
        msh = self.segments[0]
        enc = self.encoding

        def value(n: int, component: int | None = 1) -> str:
            if n >= len(msh):
                return ""
            raw = msh[n].split(enc.repetition, 1)[0]
            if component is not None:
                parts = raw.split(enc.component)
                raw = parts[component - 1] if component <= len(parts) else ""
            return enc.unescape(raw)

        return Header(
            sending_application=value(3),
            sending_facility=value(4),
            receiving_application=value(5),
            receiving_facility=value(6),
            timestamp=value(7),
            message_type=_message_type(value(9), value(9, 2)),
            control_id=value(10, None),
            processing_id=value(11),
            version=value(12),
            charset=value(18, None),
            accept_ack_type=value(15, None),
            application_ack_type=value(16, None),
            encoding=enc,
        )


_NO_SEGMENTS: list[list[str]] = []
# A path read as (segment, occurrences, field, repetitions, component, sub-component): the occurrences and
# repetitions as slices, the component and sub-component as 0-based indexes. Paths come from mapping rules,
# so there are few of them; each is worked out once per process.
PathSpec = tuple[str, slice, int | None, slice, int | None, int | None]
_SPECS: dict[str, PathSpec] = {}


def _path_spec(path: str) -> PathSpec:
    spec = _SPECS.get(path)
    if spec is None:
        match = _PATH.match(path.strip())
        if match is None:
            raise ValueError(f"Not an HL7 path: {path!r}")
        seg, occ, field, rep, comp, sub = match.group("seg", "occ", "field", "rep", "comp", "sub")
        spec = (
            seg,
            _selection(occ),
            None if field is None else int(field),
            _selection(rep),
            None if comp is None else int(comp) - 1,
            None if sub is None else int(sub) - 1,
        )
        if len(_SPECS) > 10000:
            _SPECS.clear()
        _SPECS[path] = spec
    return spec


def _selection(number: str | None) -> slice:
    """Which occurrences or repetitions `[n]` / `[*]` selects: the first when not given, none for `[0]`."""
    if number is None:
        return slice(0, 1)
    if number == "*":
        return slice(None)
    index = int(number) - 1
    return slice(index, index + 1)


def _message_type(code: str, trigger: str) -> str:
    return f"{code}^{trigger}" if trigger else code


def parse(raw: bytes | str) -> HL7Message:
    """Parse one HL7 v2 message (bytes are decoded per MSH-18). Raises HL7ParseError on unusable input."""
    text = decode(raw)[0] if isinstance(raw, bytes) else raw
    if "\x00" in text:
        raise HL7ParseError("The message contains NUL bytes; it is not HL7 text", code="102")
    return HL7Message(text)


_ENCODINGS: dict[str, Encoding] = {}
_SEGMENT_NAME = re.compile(rb"[A-Z][A-Z0-9]{2}")
_GOOD_NAMES: set[bytes] = set()
_LINE_BREAKS = re.compile(rb"\r\n|\r|\n")


def _segments_look_right(raw: bytes, sep: int) -> bool:
    """Every non-blank line starts with a segment name and then the field separator (or ends there)."""
    lines = _LINE_BREAKS.split(raw) if b"\n" in raw else raw.split(b"\r")
    for line in lines[1:]:
        if len(line) > 3 and line[3] != sep:
            return False
        name = line[:3]
        if name in _GOOD_NAMES:
            continue
        if not line.strip():
            continue
        if _SEGMENT_NAME.fullmatch(name) is None:
            return False
        if len(_GOOD_NAMES) < 1000:
            _GOOD_NAMES.add(name)
    return True


def read_header(raw: bytes) -> tuple[Header, str] | None:
    """The header and codec of `raw` from its first line only, or None when it needs the full parse.

    The listener calls this for every message: it splits the MSH line and checks the rest with one regex
    (segment names, NUL bytes, character set) instead of splitting every segment. It answers None for
    anything unusual (escapes in MSH, odd lines, undecodable bytes), and `parse` then gives the exact
    verdict, so both always agree.
    """
    if (
        not raw.startswith(b"MSH")
        or len(raw) < 8
        or b"\x00" in raw
        or raw.rstrip(b"\r\n")[-1:] in (b"\x0b", b"\x1c", b" ")
    ):
        return None  # (parse strips those from the ends, which may reach into the header)
    cut = raw.find(b"\r")
    lf = raw.find(b"\n", 0, cut if cut != -1 else len(raw))
    if lf != -1:
        cut = lf
    line = raw[:cut] if cut != -1 else raw
    if len(line) < 8:
        return None
    sep = line[3]
    if not _segments_look_right(raw, sep):
        return None
    try:
        first = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    fields = first.split(first[3])
    enc_chars = fields[1] if len(fields) > 1 else ""
    enc = _ENCODINGS.get(first[3] + enc_chars)
    if enc is None:
        if first[3].isalnum() or len(enc_chars) < 3 or len(set(enc_chars + first[3])) != len(enc_chars) + 1:
            return None
        enc = Encoding(
            field=first[3],
            component=enc_chars[0],
            repetition=enc_chars[1],
            escape=enc_chars[2],
            subcomponent=enc_chars[3] if len(enc_chars) > 3 else "&",
        )
        _ENCODINGS[first[3] + enc_chars] = enc
    rest = first[4 + len(enc_chars) :]
    if enc.escape in rest or enc.repetition in rest:
        return None  # escapes or repetitions in the header: let the full reader settle them
    charset = fields[17] if len(fields) > 17 else ""
    codec = _CHARSETS.get(charset.split(enc.component, 1)[0].strip().upper(), "utf-8")
    try:
        raw.decode(codec)
    except UnicodeDecodeError:
        return None
    fields += [""] * (19 - len(fields))
    comp = enc.component

    def first_component(value: str) -> str:
        return value.split(comp, 1)[0]

    type_parts = fields[8].split(comp)
    header = Header(
        sending_application=first_component(fields[2]),
        sending_facility=first_component(fields[3]),
        receiving_application=first_component(fields[4]),
        receiving_facility=first_component(fields[5]),
        timestamp=first_component(fields[6]),
        message_type=_message_type(type_parts[0], type_parts[1] if len(type_parts) > 1 else ""),
        control_id=fields[9],
        processing_id=first_component(fields[10]),
        version=first_component(fields[11]),
        charset=fields[17],
        accept_ack_type=fields[14],
        application_ack_type=fields[15],
        encoding=enc,
    )
    return header, codec


BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(frozen=True)
class Batch:
    """An HL7 batch (FHS/BHS … BTS/FTS) cut into its messages; each message keeps its own bytes."""

    messages: list[bytes]
    has_file_header: bool
    batch_control_id: str  # BHS-11 (or FHS-11), echoed in the acknowledgement batch
    declared_count: int | None  # BTS-1, when given
    encoding: Encoding


def is_batch(raw: bytes) -> bool:
    return raw[:3] in (b"FHS", b"BHS")


def split_batch(raw: bytes) -> Batch:
    """Split a batch into messages at each MSH; the envelope segments are read, not stored.

    Segment endings (CR, LF, CRLF) are kept as the sender wrote them inside each message.
    """
    if not is_batch(raw) or len(raw) < 8:
        raise HL7ParseError("A batch starts with FHS or BHS", code="100")
    sep = chr(raw[3])
    enc_chars = raw[4:].split(sep.encode(), 1)[0].decode("latin-1")
    if sep.isalnum() or len(enc_chars) < 3:
        raise HL7ParseError("FHS-2/BHS-2 encoding characters are invalid", code="102")
    enc = Encoding(
        field=sep,
        component=enc_chars[0],
        repetition=enc_chars[1],
        escape=enc_chars[2],
        subcomponent=enc_chars[3] if len(enc_chars) > 3 else "&",
    )
    messages: list[bytes] = []
    current: list[bytes] = []
    control_id = ""
    declared: int | None = None
    for piece in re.split(rb"(?<=\r\n)|(?<=\r)(?!\n)|(?<=\n)", raw):
        name = piece[:3]
        if name in BATCH_SEGMENTS:
            if current:
                messages.append(b"".join(current))
                current = []
            fields = piece.rstrip(b"\r\n").decode("latin-1").split(sep)
            if name in (b"FHS", b"BHS") and len(fields) > 10 and (name == b"BHS" or not control_id):
                control_id = enc.unescape(fields[10])
            if name == b"BTS" and len(fields) > 1 and fields[1].strip().isdigit():
                declared = int(fields[1])
            continue
        if name == b"MSH" and current:
            messages.append(b"".join(current))
            current = []
        if piece.strip() or current:
            current.append(piece)
    if current:
        messages.append(b"".join(current))
    messages = [m for m in messages if m.strip()]
    return Batch(messages, raw.startswith(b"FHS"), control_id, declared, enc)


def escape(value: str, enc: Encoding | None = None) -> str:
    """Escape delimiter characters in a value written into a message."""
    enc = enc or Encoding()
    esc = enc.escape
    # Most values (ids, codes, names) need nothing: answer them without building five new strings.
    if not any(ch in value for ch in (esc, enc.field, enc.component, enc.subcomponent, enc.repetition)):
        return _CONTROL.sub(_hex_escape(esc), value) if _CONTROL.search(value) else value
    value = (
        value.replace(esc, f"{esc}E{esc}")
        .replace(enc.field, f"{esc}F{esc}")
        .replace(enc.component, f"{esc}S{esc}")
        .replace(enc.subcomponent, f"{esc}T{esc}")
        .replace(enc.repetition, f"{esc}R{esc}")
    )
    return _CONTROL.sub(_hex_escape(esc), value) if _CONTROL.search(value) else value


def _hex_escape(esc: str) -> Callable[[re.Match[str]], str]:
    return lambda match: f"{esc}X{ord(match.group()):02X}{esc}"
