"""Outbound HL7 v2 over MLLP: send one message, wait for its own ACK.

The ACK that counts is the one whose MSA-2 names our MSH-10. Anything else that arrives meanwhile — a late
ACK for an earlier message that timed out on this connection, bytes outside an MLLP block, a frame that is
not an ACK — is discarded and the wait goes on until the deadline, so a late answer is never taken for the
current message. Outcomes: AA/CA → success; AE/CE → transient ConnectorError (the receiver could not
process it now); AR/CR → permanent (it will never take this message); timeout, refused or dropped
connection → transient.

The connection is kept between sends (that is when late ACKs matter) and reopened when the peer has closed
it; peers such as hl7apy's MLLPServer answer one message per connection. TLS when the connector config sets
`tls` (system CAs) or `tls_ca_file` (a private CA), with `tls_cert_file`/`tls_key_file` for mutual TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from connectors.hl7v2.ack import Frame, MLLPDecoder, mllp_frame
from connectors.hl7v2.reader import HL7Message, HL7ParseError, parse
from healthsync.errors import ConnectorError

logger = logging.getLogger(__name__)

SUCCESS_CODES = {"AA", "CA"}
TRANSIENT_CODES = {"AE", "CE"}
PERMANENT_CODES = {"AR", "CR"}
MAX_CONTROL_ID = 20  # MSH-10 is ST(20) up to v2.6; later versions allow more, every version allows this


@dataclass(frozen=True)
class Ack:
    """The peer's acknowledgement of one message."""

    code: str  # MSA-1
    control_id: str  # MSA-2, equal to the MSH-10 we sent
    text: str  # MSA-3 and ERR, the receiver's own words
    raw: str
    discarded: int = 0  # frames that arrived first and were not this message's ACK

    def as_response(self) -> dict[str, Any]:
        return {"ack_code": self.code, "control_id": self.control_id, "text": self.text, "ack": self.raw}


@dataclass
class SenderConfig:
    """Where and how to connect, read from an outbound connector's config."""

    host: str
    port: int
    ack_timeout: float = 30.0
    connect_timeout: float = 10.0
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_server_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_connector_config(cls, config: dict[str, Any], *, timeout: float = 30.0) -> SenderConfig:
        return cls(
            host=str(config.get("host") or ""),
            port=int(config.get("port") or 0),
            ack_timeout=float(config.get("ack_timeout_seconds") or timeout),
            connect_timeout=float(config.get("connect_timeout_seconds") or min(timeout, 10.0)),
            tls=bool(config.get("tls") or config.get("tls_ca_file")),
            tls_ca_file=str(config.get("tls_ca_file") or ""),
            tls_cert_file=str(config.get("tls_cert_file") or ""),
            tls_key_file=str(config.get("tls_key_file") or ""),
            tls_server_name=str(config.get("tls_server_name") or ""),
        )

    def key(self) -> tuple[Any, ...]:
        return (self.host, self.port, self.tls, self.tls_ca_file, self.tls_cert_file, self.tls_key_file)


def validate_sender_config(config: dict[str, Any]) -> list[str]:
    """Problems with an outbound HL7 v2 connector's config, for the console form."""
    errors: list[str] = []
    if not isinstance(config.get("host"), str) or not config["host"].strip():
        errors.append("host must name the receiving system")
    port = config.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        errors.append("port must be an integer between 1 and 65535")
    for key in ("ack_timeout_seconds", "connect_timeout_seconds"):
        value = config.get(key)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or value <= 0
        ):
            errors.append(f"{key} must be a positive number of seconds")
    if bool(config.get("tls_cert_file")) != bool(config.get("tls_key_file")):
        errors.append("mutual TLS needs both tls_cert_file and tls_key_file")
    operations = config.get("operations")
    if operations is not None and not isinstance(operations, dict):
        errors.append("operations must map operation names to {} (the payload carries the message)")
    return errors


def client_tls_context(config: SenderConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert_file:
        context.load_cert_chain(certfile=config.tls_cert_file, keyfile=config.tls_key_file or None)
    return context


def control_id_for(idempotency_key: str) -> str:
    """A stable MSH-10 for a delivery: a resend after a lost ACK carries the same id, so the receiver's
    duplicate check can recognise it."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:MAX_CONTROL_ID].upper()


def with_control_id(message: str, control_id: str) -> str:
    """`message` (segments separated by CR, LF or CRLF) with MSH-10 set to `control_id`, CR-terminated."""
    segments = [s for s in message.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ConnectorError("The HL7 v2 payload does not start with an MSH segment", permanent=True)
    sep = segments[0][3]
    fields = segments[0].split(sep)
    while len(fields) < 12:
        fields.append("")
    fields[9] = control_id
    segments[0] = sep.join(fields)
    return "\r".join(segments) + "\r"


def read_ack(payload: bytes) -> Ack | None:
    """The ACK in one MLLP frame, or None when the frame is not an HL7 acknowledgement."""
    try:
        message: HL7Message = parse(payload)
    except (HL7ParseError, ValueError):
        return None
    code = message.get("MSA-1").strip().upper()
    if code not in SUCCESS_CODES | TRANSIENT_CODES | PERMANENT_CODES:
        return None
    # MSA-3 (text), ERR-3 (table 0357 code^text, v2.5+) and ERR-8 (user message); v2.3's ERR-1 is rarely set.
    texts = [message.get("MSA-3"), *message.get_all("ERR[*]-3.2"), *message.get_all("ERR[*]-8")]
    return Ack(
        code=code,
        control_id=message.get("MSA-2").strip(),
        text="; ".join(dict.fromkeys(t for t in texts if t)),
        raw=message.text,
    )


class MLLPSender:
    """One connection to one receiver; sends one message at a time (a lock serialises threads)."""

    def __init__(self, config: SenderConfig) -> None:
        self.config = config
        self._sock: socket.socket | None = None
        self._decoder = MLLPDecoder()
        self._lock = threading.Lock()
        # Frames read off the kept connection before a send: late ACKs, judged with the send's own frames.
        self._pending_frames: list[Frame] = []

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._decoder = MLLPDecoder()
        self._pending_frames = []

    def _connect(self) -> socket.socket:
        cfg = self.config
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout)
        except TimeoutError as exc:
            raise ConnectorError(f"MLLP connect to {cfg.host}:{cfg.port} timed out") from exc
        except OSError as exc:
            raise ConnectorError(
                f"MLLP connect to {cfg.host}:{cfg.port} failed: {exc.strerror or exc}"
            ) from exc
        context = client_tls_context(cfg)
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=cfg.tls_server_name or cfg.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                # A certificate the CA does not vouch for will not fix itself by retrying.
                permanent = isinstance(exc, ssl.SSLCertVerificationError)
                raise ConnectorError(
                    f"TLS handshake with {cfg.host}:{cfg.port} failed: {exc}", permanent=permanent
                ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _usable(self) -> bool:
        """Whether the open connection is still there; bytes already waiting (late ACKs) are kept."""
        sock = self._sock
        if sock is None:
            return False
        try:
            while True:
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    ready = True
                else:
                    ready = bool(select.select([sock], [], [], 0)[0])
                if not ready:
                    return True
                sock.setblocking(False)
                try:
                    data = sock.recv(65536)
                finally:
                    sock.setblocking(True)
                if not data:
                    return False
                self._pending_frames.extend(self._decoder.feed(data))
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False

    def send(self, message: str | bytes, *, control_id: str, encoding: str = "utf-8") -> Ack:
        """Send `message` (whose MSH-10 is `control_id`) and return its ACK; raises ConnectorError."""
        payload = message.encode(encoding) if isinstance(message, str) else message
        with self._lock:
            self._pending_frames = []
            reused = self._usable()
            while True:
                if not reused:
                    self._close()
                    self._sock = self._connect()
                try:
                    return self._exchange(payload, control_id)
                except _ClosedBeforeReply:
                    self._close()
                    if not reused:
                        raise ConnectorError(
                            f"{self._peer()} closed the connection before acknowledging {control_id}"
                        ) from None
                # A kept connection the peer had closed between sends (its FIN still in flight) loses the
                # message unread: once more on a fresh connection. The same MSH-10 goes out, should it have
                # been read after all.
                reused = False

    def _peer(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _exchange(self, payload: bytes, control_id: str) -> Ack:
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + self.config.ack_timeout
        try:
            sock.settimeout(self.config.ack_timeout)
            sock.sendall(mllp_frame(payload))
        except OSError:
            raise _ClosedBeforeReply from None
        discarded = 0
        received_any = False
        frames = self._pending_frames
        self._pending_frames = []
        while True:
            for frame in frames:
                ack = None if frame.junk else read_ack(frame.payload)
                if ack is not None and ack.control_id == control_id:
                    return _settle(Ack(ack.code, ack.control_id, ack.text, ack.raw, discarded), self._peer())
                discarded += 1
                # Only the shape goes to the log: a stray frame may hold patient data.
                logger.warning(
                    "MLLP %s: discarded %s while waiting for the ACK of %s",
                    self._peer(),
                    "a late ACK for another message" if ack is not None else "a frame that is not an ACK",
                    control_id,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectorError(self._timeout_text(control_id, discarded))
            try:
                sock.settimeout(remaining)
                data = sock.recv(65536)
            except TimeoutError:
                # Keep the connection: the ACK may still come, and the next send will discard it by MSA-2.
                raise ConnectorError(self._timeout_text(control_id, discarded)) from None
            except OSError as exc:
                if not received_any:
                    raise _ClosedBeforeReply from None
                self._close()
                raise ConnectorError(f"MLLP connection to {self._peer()} failed: {exc}") from exc
            if not data:
                if not received_any:
                    raise _ClosedBeforeReply
                self._close()
                raise ConnectorError(
                    f"{self._peer()} closed the connection without acknowledging {control_id}"
                    + (f" ({discarded} other frame(s) discarded)" if discarded else "")
                )
            received_any = True
            frames = self._decoder.feed(data)

    def _timeout_text(self, control_id: str, discarded: int) -> str:
        text = f"No ACK for {control_id} from {self._peer()} within {self.config.ack_timeout:g}s"
        return text + (f" ({discarded} other frame(s) discarded)" if discarded else "")


class _ClosedBeforeReply(Exception):
    """The peer was gone before a single byte of reply came back."""


def _settle(ack: Ack, peer: str) -> Ack:
    if ack.code in SUCCESS_CODES:
        return ack
    text = f"{peer} answered {ack.code} for {ack.control_id}" + (f": {ack.text}" if ack.text else "")
    raise ConnectorError(text, permanent=ack.code in PERMANENT_CODES, response=ack.as_response())


_senders: dict[tuple[Any, ...], MLLPSender] = {}
_senders_lock = threading.Lock()


def sender_for(config: SenderConfig) -> MLLPSender:
    """The process's sender for one destination, so that its connection (and any late ACK) is reused."""
    with _senders_lock:
        sender = _senders.get(config.key())
        if sender is None:
            sender = _senders[config.key()] = MLLPSender(config)
        else:
            sender.config = config  # timeouts may have been edited in the console
        return sender


def close_all() -> None:
    with _senders_lock:
        senders = list(_senders.values())
        _senders.clear()
    for sender in senders:
        sender.close()
