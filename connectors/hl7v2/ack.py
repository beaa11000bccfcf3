"""HL7 v2 acknowledgements (v2.5.1 original and enhanced mode) and MLLP framing.

An ACK must be buildable when the original is garbage, so everything read from the original header is
optional: without a header the ACK goes out with default encoding characters and an empty MSA-2.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, replace

from connectors.hl7v2.reader import Encoding, Header, escape

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_FRAME_BYTES = 16 * 1024 * 1024

# HL7 table 0357 (message error condition codes) used by the listener.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_DATA_TYPE = "102"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_EVENT_CODE = "201"
ERR_UNSUPPORTED_PROCESSING_ID = "202"
ERR_UNSUPPORTED_VERSION = "203"
ERR_INTERNAL = "207"

ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# Enhanced mode (MSH-15/16 set) answers the accept acknowledgement with commit codes.
_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}
_ACK_CODES = {"AA", "AE", "AR", "CA", "CE", "CR"}

_counter = itertools.count(1)
_PROCESS_TAG = f"{os.getpid() % 10000:04d}"


def new_control_id() -> str:
    """A control id unique across this host's listener processes: time, pid and a counter (20 chars)."""
    return f"{time.strftime('%y%m%d%H%M%S')}{_PROCESS_TAG}{next(_counter) % 10000:04d}"


def _timestamp() -> str:
    return time.strftime("%Y%m%d%H%M%S") + time.strftime("%z")


def build_ack(
    header: Header | None,
    code: str,
    *,
    text: str = "",
    error_code: str = "",
    enhanced: bool = False,
    sending_application: str = "HEALTHSYNC",
    sending_facility: str = "",
) -> str:
    """An ACK for `header` (None when the original could not be read), segments ended with CR.

    `code` is AA, AE or AR; with `enhanced` it is sent as the commit code CA, CE or CR. AE/AR carry an ERR
    segment with the HL7 table 0357 `error_code` (207 when not given) and `text` as the user message.
    """
    if code not in _ACK_CODES:
        raise ValueError(f"Not an acknowledgement code: {code!r}")
    ack_code = _ENHANCED.get(code, code) if enhanced else code
    enc = header.encoding if header is not None else Encoding()
    f, c = enc.field, enc.component

    def esc(value: str) -> str:
        return escape(value, enc)

    if header is not None:
        trigger = header.message_type.partition("^")[2]
        version = header.version or "2.5.1"
        processing = header.processing_id or "P"
        # Reply to the sender: its application and facility become our receiver.
        receiver_app, receiver_fac = header.sending_application, header.sending_facility
        own_app = sending_application or header.receiving_application
        own_fac = sending_facility or header.receiving_facility
        control_id = header.control_id
        charset = header.charset
    else:
        trigger, version, processing = "", "2.5.1", "P"
        receiver_app = receiver_fac = ""
        own_app, own_fac = sending_application, sending_facility
        control_id = charset = ""
    message_type = f"ACK{c}{esc(trigger)}{c}ACK" if trigger else "ACK"
    encoding_chars = f"{enc.component}{enc.repetition}{enc.escape}{enc.subcomponent}"
    msh = [
        "MSH",
        encoding_chars,
        esc(own_app),
        esc(own_fac),
        esc(receiver_app),
        esc(receiver_fac),
        _timestamp(),
        "",
        message_type,
        new_control_id(),
        esc(processing),
        esc(version),
    ]
    if charset:
        # MSH-13..17 stay empty; MSH-18 says the ACK is encoded like the original.
        msh += ["", "", "", "", "", esc(charset)]
    segments = [f.join(msh), f.join(["MSA", ack_code, esc(control_id), esc(text)])]
    if code in {"AE", "AR"} or ack_code in {"CE", "CR"}:
        err_code = error_code or ERR_INTERNAL
        err_text = ERROR_TEXT.get(err_code, "Error")
        err = ["ERR", "", "", f"{esc(err_code)}{c}{esc(err_text)}{c}HL70357", "E", "", "", "", esc(text)]
        segments.append(f.join(err))
    return "\r".join(segments) + "\r"


_MARK = "HSACKMARK"
_TEMPLATES: dict[tuple[object, ...], tuple[str, str, str, str, str]] = {}
_TEMPLATES_MAX = 4096
_clock: list[object] = [0, ""]


def _cached_timestamp() -> str:
    # One strftime per second instead of one per ACK.
    now = int(time.time())
    if _clock[0] != now:
        _clock[0], _clock[1] = now, _timestamp()
    return str(_clock[1])


def fast_ack(header: Header, code: str = "AA", *, enhanced: bool = False) -> str:
    """build_ack(header, code, enhanced=...) for an ACK without text, from a template per sender and type.

    The listener answers thousands of messages a second from a handful of senders: everything but MSH-7,
    MSH-10 and MSA-2 is the same for all of them, so it is built once (by build_ack itself) and reused.
    """
    key = (
        header.encoding,
        header.sending_application,
        header.sending_facility,
        header.receiving_application,
        header.receiving_facility,
        header.message_type,
        header.processing_id,
        header.version,
        header.charset,
        code,
        enhanced,
    )
    parts = _TEMPLATES.get(key)
    if parts is None:
        if _MARK in "".join(str(k) for k in key[1:9]):
            return build_ack(header, code, enhanced=enhanced)
        text = build_ack(replace(header, control_id=_MARK), code, enhanced=enhanced)
        f = header.encoding.field
        msh, _, rest = text.partition("\r")
        fields = msh.split(f)
        before_msa, _, after_msa = rest.partition(_MARK)
        parts = (
            f.join(fields[:6]) + f,  # up to MSH-6, then MSH-7 (time)
            f + f.join(fields[7:9]) + f,  # MSH-8, MSH-9, then MSH-10 (our control id)
            f + f.join(fields[10:]) + "\r" + before_msa,  # MSH-11 on, then MSA-2 (their control id)
            after_msa,
            "",
        )
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[key] = parts
    cid = escape(header.control_id, header.encoding)
    return parts[0] + _cached_timestamp() + parts[1] + new_control_id() + parts[2] + cid + parts[3]


def build_batch_ack(
    ack_texts: list[str],
    *,
    encoding: Encoding,
    reference_batch_id: str = "",
    file_envelope: bool = False,
    receiver_application: str = "",
    receiver_facility: str = "",
    sending_application: str = "HEALTHSYNC",
) -> str:
    """An acknowledgement batch: BHS, one ACK per message of the original batch, BTS (in FHS…FTS if asked).

    BHS-11 is our own batch control id and BHS-12 the sender's (its BHS-11), as HL7 v2.5 §2.10.3 lays out.
    """
    f = encoding.field
    chars = f"{encoding.component}{encoding.repetition}{encoding.escape}{encoding.subcomponent}"

    def envelope(name: str) -> str:
        own_id = new_control_id()
        fields = [
            name,
            chars,
            escape(sending_application, encoding),
            "",
            escape(receiver_application, encoding),
        ]
        fields += [escape(receiver_facility, encoding), _timestamp(), "", "", "", own_id]
        fields.append(escape(reference_batch_id, encoding))
        return f.join(fields) + "\r"

    body = envelope("BHS") + "".join(ack_texts) + f"BTS{f}{len(ack_texts)}\r"
    if file_envelope:
        body = envelope("FHS") + body + f"FTS{f}1\r"
    return body


def mllp_frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block: 0x0B, payload, 0x1C 0x0D."""
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True)
class Frame:
    """One unit cut from an MLLP stream: a message payload, or bytes that were not inside a block."""

    payload: bytes
    junk: bool = False
    reason: str = ""


class MLLPDecoder:
    """Incremental MLLP decoder: feed it bytes as they arrive, get back complete frames.

    A block missing its leading 0x0B is tolerated when it starts with ``MSH`` (some senders drop it).
    Anything else outside a block is returned as a junk frame, so it can be refused and kept, not
    silently skipped. CR/LF between blocks is ignored.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buf = self._buffer
        while buf:
            first = buf[0]
            if first in (0x0D, 0x0A):
                del buf[0]
                continue
            if first == 0x0B:
                end = buf.find(END_BLOCK, 1)
                if end == -1:
                    if len(buf) > self._max:
                        frames.append(Frame(bytes(buf[1:]), junk=True, reason="MLLP block is too large"))
                        buf.clear()
                    break
                frames.append(Frame(bytes(buf[1:end])))
                del buf[: end + 2]
                continue
            if buf.startswith(b"MSH") or (len(buf) < 3 and b"MSH".startswith(bytes(buf))):
                end = buf.find(END_BLOCK)
                start = buf.find(START_BLOCK)
                if start != -1 and (end == -1 or start < end):
                    # A new block opens before this one ends: what came before it is not a message.
                    frames.append(Frame(bytes(buf[:start]), junk=True, reason="bytes before an MLLP block"))
                    del buf[:start]
                    continue
                if end == -1:
                    if len(buf) > self._max:
                        frames.append(Frame(bytes(buf), junk=True, reason="MLLP block is too large"))
                        buf.clear()
                    break
                frames.append(Frame(bytes(buf[:end])))
                del buf[: end + 2]
                continue
            # Junk: it runs up to the next start block, or through the next end block.
            start = buf.find(START_BLOCK)
            end = buf.find(END_BLOCK)
            if start != -1 and (end == -1 or start < end):
                cut, skip = start, start
            elif end != -1:
                cut, skip = end, end + 2
            else:
                if len(buf) > self._max:
                    frames.append(Frame(bytes(buf), junk=True, reason="bytes outside an MLLP block"))
                    buf.clear()
                break
            frames.append(Frame(bytes(buf[:cut]), junk=True, reason="bytes outside an MLLP block"))
            del buf[:skip]
        return frames

    def close(self) -> list[Frame]:
        """At end of stream: whatever is left was never completed."""
        if not self._buffer.strip(b"\r\n"):
            self._buffer.clear()
            return []
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [Frame(rest.lstrip(START_BLOCK), junk=True, reason="MLLP block not terminated")]
