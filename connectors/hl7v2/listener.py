"""Inbound HL7 v2 over MLLP: commit before ACK, with group commit across connections.

The event loop reads frames, reads only the MSH line (reader.read_header; the full reader settles anything
unusual) and decides accept or reject; one writer thread drains everything waiting and stores it in one
transaction (on PostgreSQL on its own autocommit psycopg connection: one statement, so one round trip, that
is its own transaction; no ORM), then resolves each waiter. ACKs for accepted messages come from a per-sender template. A connection's ACKs go back in the
order its messages arrived, even when the sender pipelines. If the commit fails, every waiter of that batch
gets AE 207 and nothing is acknowledged AA; the next batch reconnects.

Also: TLS when the connector config names `tls_cert_file` and `tls_key_file` (and `tls_client_ca_file`
for mutual TLS); HL7 batches (FHS/BHS … BTS/FTS) in one MLLP block, each message stored as its own row
and answered together by one acknowledgement batch with one ACK per message (BHS-12 echoes the sender's
BHS-11); enhanced mode (CA/CE/CR) when the connector sets `enhanced_ack` or the sender fills MSH-15/16;
`--processes N` runs N listeners on one port (SO_REUSEPORT) to use every core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections, connection

from connectors.hl7v2 import ack as acks
from connectors.hl7v2.reader import (
    _CHARSETS,
    Header,
    HL7ParseError,
    is_batch,
    parse,
    read_header,
    split_batch,
)
from healthsync import ingest
from healthsync.choices import Direction, MessageStatus, Protocol, SystemKind

if TYPE_CHECKING:
    from healthsync.models import Connector

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_IN_FLIGHT_PER_CONNECTION = 512
CONFIG_REFRESH_SECONDS = 10.0
STORE_FAILED_TEXT = "could not store message; resend"


@dataclass
class _Pending:
    """A message waiting for its commit, and the ACK to send once it is settled."""

    item: ingest.InboundItem
    future: asyncio.Future[bool]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True)
class Decision:
    """What the door decided for one frame, before storage."""

    item_status: str
    header: Header | None
    ack_code: str
    error_code: str = ""
    text: str = ""
    codec: str = "utf-8"
    message_type: str = ""
    control_id: str = ""
    sender: str = ""


def type_accepted(message_type: str, accepted: frozenset[str]) -> str:
    """'' when accepted, else the table 0357 code: 200 unknown message type, 201 unknown trigger event."""
    code = message_type.partition("^")[0]
    if "*" in accepted or message_type in accepted or f"{code}^*" in accepted or code in accepted:
        return ""
    if any(t.partition("^")[0] == code for t in accepted):
        return acks.ERR_UNSUPPORTED_EVENT_CODE
    return acks.ERR_UNSUPPORTED_MESSAGE_TYPE


def decide(raw: bytes, accepted: frozenset[str]) -> Decision:
    """Parse just enough of `raw` to accept it or to say why not.

    The MSH line alone (read_header) settles almost every message; anything unusual goes through the full
    reader, so the verdict is the same either way.
    """
    quick = read_header(raw)
    if quick is not None:
        return decide_header(quick[0], accepted)
    try:
        header = parse(raw).header
    except HL7ParseError as exc:
        return Decision(MessageStatus.REJECTED, None, "AR", exc.code, exc.message)
    return decide_header(header, accepted)


def decide_header(header: Header, accepted: frozenset[str]) -> Decision:
    """Accept or refuse a message by its header: type present, control id present, type accepted here."""
    codec = _CHARSETS.get(header.charset.strip().upper(), "utf-8")
    base = {
        "header": header,
        "codec": codec,
        "message_type": header.message_type,
        "control_id": header.control_id,
        "sender": header.sender,
    }
    if not header.message_type:
        return Decision(
            MessageStatus.REJECTED,
            ack_code="AR",
            error_code=acks.ERR_REQUIRED_FIELD_MISSING,
            text="MSH-9 message type is missing",
            **base,
        )
    if not header.control_id:
        return Decision(
            MessageStatus.REJECTED,
            ack_code="AR",
            error_code=acks.ERR_REQUIRED_FIELD_MISSING,
            text="MSH-10 message control id is missing",
            **base,
        )
    refused = type_accepted(header.message_type, accepted)
    if refused:
        return Decision(
            MessageStatus.REJECTED,
            ack_code="AR",
            error_code=refused,
            text=f"Message type {header.message_type} is not accepted on this connector",
            **base,
        )
    return Decision(MessageStatus.RECEIVED, ack_code="AA", **base)


class _Writer(threading.Thread):
    """The single thread that talks to the database: group commit of whatever is waiting."""

    def __init__(self, listener: MLLPListener) -> None:
        super().__init__(name="mllp-writer", daemon=True)
        self.listener = listener
        self.queue: queue.Queue[_Pending | None] = queue.Queue()
        self._last_refresh = time.monotonic()
        self._raw: Any = None

    def run(self) -> None:
        try:
            while True:
                try:
                    first = self.queue.get(timeout=1.0)
                except queue.Empty:
                    self._maybe_refresh()
                    continue
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit(batch)
                self._maybe_refresh()
                if stop:
                    return
        finally:
            self._drop_raw()
            connection.close()

    def _raw_connection(self) -> object | None:
        """On PostgreSQL, the writer's own autocommit psycopg connection (no ORM on the hot path)."""
        if connection.vendor != "postgresql" or not self.listener.raw_sql:
            return None
        if self._raw is None or self._raw.closed:
            self._raw = ingest.connect()
        return self._raw

    def _drop_raw(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            raw = self._raw_connection()
            items = [p.item for p in batch]
            # Calls through the module so a test can make this one seam fail.
            if raw is None:
                outcomes = ingest.store_messages(items)
            else:
                outcomes = ingest.store_messages(items, raw_connection=raw)
        except Exception as exc:
            # Django's wrapped errors, or psycopg's own from the writer's raw connection.
            database = isinstance(exc, DatabaseError) or type(exc).__module__.startswith("psycopg")
            # The class and SQLSTATE say what went wrong; the error text may quote stored values, so it stays out.
            logger.error(
                "mllp: could not store a batch of %d messages (%s %s); answering AE",
                len(batch),
                type(exc).__name__,
                getattr(exc, "sqlstate", "") or getattr(exc.__cause__, "sqlstate", "") or "",
                exc_info=not database,
            )
            # Drop the broken connections so the next batch reconnects once the database is back.
            with contextlib.suppress(Exception):
                connection.close()
            self._drop_raw()
            _resolve(batch, False)
            return
        duplicates = sum(1 for o in outcomes if o.is_duplicate)
        logger.debug("mllp: stored %d messages (%d duplicates)", len(batch), duplicates)
        self.listener.stored += len(batch)
        _resolve(batch, True)

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._last_refresh < CONFIG_REFRESH_SECONDS:
            return
        self._last_refresh = time.monotonic()
        try:
            close_old_connections()
            self.listener.accepted = load_accepted_types(self.listener.connector)
        except Exception:
            logger.warning("mllp: could not refresh accepted message types; keeping the old list")
            with contextlib.suppress(Exception):
                connection.close()


def _resolve(batch: list[_Pending], stored: bool) -> None:
    """Settle every waiter of a batch with one wake-up of its event loop."""

    def settle() -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(stored)

    with contextlib.suppress(RuntimeError):  # the loop is already closed at shutdown
        batch[0].loop.call_soon_threadsafe(settle)


def tls_context(config: dict[str, Any]) -> ssl.SSLContext | None:
    """A server TLS context from the connector's `tls_cert_file` and `tls_key_file` (PEM), or None.

    With `tls_client_ca_file` as well, senders must present a certificate signed by that CA (mutual TLS).
    """
    cert, key = config.get("tls_cert_file"), config.get("tls_key_file")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file in the connector config")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        client_ca = config.get("tls_client_ca_file")
        if client_ca:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Cannot load the listener's TLS certificate or key: {exc}") from exc
    return context


def load_accepted_types(connector: Connector) -> frozenset[str]:
    """connector.config["accepted_types"] when set, else every type with an HL7 v2 mapping set."""
    from healthsync.models import MappingSet

    configured = (connector.config or {}).get("accepted_types")
    if configured:
        return frozenset(str(t).strip() for t in configured)
    return frozenset(
        MappingSet.objects.filter(protocol=Protocol.HL7V2).values_list("message_type", flat=True).distinct()
    )


def resolve_connector(*, code: str | None, port: int) -> Connector:
    """The connector this listener stores under: by code, by configured port, the only one, or a new one."""
    from healthsync.models import Connector, System

    inbound = Connector.objects.filter(protocol=Protocol.HL7V2, direction=Direction.INBOUND)
    if code:
        try:
            return inbound.get(code=code)
        except Connector.DoesNotExist:
            raise LookupError(f"No inbound HL7 v2 connector with code {code!r}") from None
    by_port = [c for c in inbound.filter(is_enabled=True) if (c.config or {}).get("port") == port]
    if len(by_port) == 1:
        return by_port[0]
    if len(by_port) > 1:
        raise LookupError(f"Several enabled inbound HL7 v2 connectors use port {port}; pass --connector")
    every = list(inbound)
    if len(every) == 1:
        return every[0]
    if len(every) > 1:
        raise LookupError(
            "Several inbound HL7 v2 connectors exist and none is set to this port; pass --connector"
        )
    system, _ = System.objects.get_or_create(
        code="hl7-inbound", defaults={"name": "HL7 inbound", "kind": SystemKind.EHR}
    )
    connector, _ = Connector.objects.get_or_create(
        code=f"mllp-{port}",
        defaults={
            "system": system,
            "name": f"MLLP listener on port {port}",
            "direction": Direction.INBOUND,
            "protocol": Protocol.HL7V2,
            "config": {"port": port},
        },
    )
    logger.warning("mllp: no inbound HL7 v2 connector was configured; created %s", connector.code)
    return connector


class MLLPListener:
    """An asyncio MLLP server storing under one connector. Run with `serve()`, or `start()` in a thread."""

    def __init__(self, connector: Connector, host: str = "127.0.0.1", port: int = 2575) -> None:
        self.connector = connector
        self.connector_id: int = connector.pk
        self.lane: str = connector.lane
        self.enhanced = bool((connector.config or {}).get("enhanced_ack", False))
        # Tests set this False to exercise the ORM path on PostgreSQL too.
        self.raw_sql = True
        self.ssl: ssl.SSLContext | None = None
        self.reuse_port = False
        self.host = host
        self.port = port
        self.accepted: frozenset[str] = frozenset()
        self.stored = 0
        self.received = 0
        self._writer: _Writer | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # Running ----------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Synchronous set-up (database reads, TLS files) before the loop starts."""
        self.ssl = tls_context(self.connector.config or {})
        self.accepted = load_accepted_types(self.connector)
        if not self.accepted:
            logger.warning(
                "mllp: connector %s accepts no message type (no accepted_types, no HL7 v2 mapping set)",
                self.connector.code,
            )

    async def serve(self, *, install_signals: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._writer = _Writer(self)
        self._writer.start()
        self._server = await asyncio.start_server(
            self._handle,
            self.host,
            self.port,
            limit=1 << 20,
            ssl=self.ssl,
            reuse_port=self.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.add_signal_handler(sig, self._stopping.set)
        logger.info("mllp: listening on %s:%d for connector %s", self.host, self.port, self.connector.code)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        logger.info("mllp: stopping; finishing messages in flight")
        assert self._server is not None and self._writer is not None
        self._server.close()
        # Stop reading new frames; each connection still answers what it already queued.
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=30)
        self._writer.queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join, 30)
        # The last batches' worker kick must not die with the process.
        flush = getattr(ingest.kick_worker, "flush", None)
        if flush is not None:
            await asyncio.get_running_loop().run_in_executor(None, flush)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        logger.info("mllp: stopped; %d messages received, %d stored", self.received, self.stored)

    def stop(self) -> None:
        """Ask a running listener to stop (thread-safe); returns once it has."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def start(self) -> int:
        """Run in a background thread (tests, embedding); returns the bound port."""
        self.prepare()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve(install_signals=False)), name="mllp-listener", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("MLLP listener did not start")
        return self.port

    # One connection ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        replies: asyncio.Queue[tuple[asyncio.Future[bool] | None, Callable[[bool], bytes]] | None] = (
            asyncio.Queue(MAX_IN_FLIGHT_PER_CONNECTION)
        )
        answering = asyncio.create_task(self._answer(replies, writer))
        decoder = acks.MLLPDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    for frame in decoder.close():
                        await self._accept_frame(frame, replies)
                    break
                for frame in decoder.feed(data):
                    await self._accept_frame(frame, replies)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            # Let every queued ACK go out (in order) before closing.
            try:
                replies.put_nowait(None)
            except asyncio.QueueFull:
                await replies.put(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(answering)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.discard(task)
            logger.debug("mllp: connection from %s closed", peer)

    async def _accept_batch(self, raw: bytes, replies: asyncio.Queue[Any]) -> bool:
        """An HL7 batch over MLLP: each message is stored as its own row (all in the same group commit) and
        the answer is one acknowledgement batch holding one ACK per message, in order. False when the bytes
        are not a usable batch (the caller then rejects them whole)."""
        try:
            batch = split_batch(raw)
        except HL7ParseError:
            return False
        if not batch.messages:
            return False
        loop = asyncio.get_running_loop()
        decisions: list[Decision] = []
        futures: list[asyncio.Future[bool]] = []
        assert self._writer is not None
        for message in batch.messages:
            self.received += 1
            decision = decide(message, self.accepted)
            future: asyncio.Future[bool] = loop.create_future()
            self._writer.queue.put(_Pending(self._item(message, decision), future, loop))
            decisions.append(decision)
            futures.append(future)
        header = next((d.header for d in decisions if d.header is not None), None)
        codec = decisions[0].codec

        def render(stored: list[bool]) -> bytes:
            text = acks.build_batch_ack(
                [self._ack_text(d, ok) for d, ok in zip(decisions, stored, strict=True)],
                encoding=batch.encoding,
                reference_batch_id=batch.batch_control_id,
                file_envelope=batch.has_file_header,
                receiver_application=header.sending_application if header else "",
                receiver_facility=header.sending_facility if header else "",
            )
            return acks.mllp_frame(text.encode(codec, errors="replace"))

        logger.info("mllp: batch of %d messages", len(batch.messages))
        await replies.put((asyncio.gather(*futures), render))
        return True

    def _item(self, payload: bytes, decision: Decision) -> ingest.InboundItem:
        if decision.item_status == MessageStatus.REJECTED:
            logger.info(
                "mllp: rejecting message control_id=%s error=%s",
                decision.control_id or "-",
                decision.error_code,
            )
        return ingest.InboundItem(
            connector_id=self.connector_id,
            raw=payload,
            sender=decision.sender,
            control_id=decision.control_id,
            message_type=decision.message_type,
            lane=self.lane,
            status=decision.item_status,
            error=f"{decision.error_code} {decision.text}".strip() if decision.error_code else "",
        )

    async def _accept_frame(
        self,
        frame: acks.Frame,
        replies: asyncio.Queue[tuple[asyncio.Future[bool] | None, Callable[[bool], bytes]] | None],
    ) -> None:
        if not frame.junk and is_batch(frame.payload) and await self._accept_batch(frame.payload, replies):
            return
        self.received += 1
        if frame.junk:
            decision = Decision(MessageStatus.REJECTED, None, "AR", acks.ERR_SEGMENT_SEQUENCE, frame.reason)
        else:
            decision = decide(frame.payload, self.accepted)
        item = self._item(frame.payload, decision)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        assert self._writer is not None
        self._writer.queue.put(_Pending(item, future, loop))
        await replies.put((future, lambda stored: self._ack_bytes(decision, stored)))

    def _ack_bytes(self, decision: Decision, stored: bool) -> bytes:
        return acks.mllp_frame(self._ack_text(decision, stored).encode(decision.codec, errors="replace"))

    def _ack_text(self, decision: Decision, stored: bool) -> str:
        header = decision.header
        # Enhanced mode (commit codes CA/CE/CR) only when the connector is configured for it: most senders fill
        # MSH-15/16 out of habit yet expect original-mode AA, as Mirth and most engines answer by default.
        enhanced = self.enhanced
        if stored and header is not None and decision.ack_code == "AA" and not decision.text:
            return acks.fast_ack(header, "AA", enhanced=enhanced)
        if stored:
            text = acks.build_ack(
                decision.header,
                decision.ack_code,
                text=decision.text,
                error_code=decision.error_code,
                enhanced=enhanced,
            )
        else:
            text = acks.build_ack(
                decision.header,
                "AE",
                text=STORE_FAILED_TEXT,
                error_code=acks.ERR_INTERNAL,
                enhanced=enhanced,
            )
        return text

    async def _answer(
        self,
        replies: asyncio.Queue[tuple[asyncio.Future[bool] | None, Callable[[bool], bytes]] | None],
        writer: asyncio.StreamWriter,
    ) -> None:
        broken = False
        while True:
            entry = await replies.get()
            if entry is None:
                return
            future, render = entry
            stored = await future if future is not None else False
            if broken:
                continue  # keep draining so the reader never blocks; the message is stored regardless
            try:
                writer.write(render(stored))
                if replies.empty():
                    await writer.drain()
            except (ConnectionError, RuntimeError):
                broken = True


def run(*, host: str, port: int, connector_code: str | None = None, processes: int = 1) -> None:
    """Run a listener in the foreground until SIGINT/SIGTERM; `processes` > 1 shares the port (SO_REUSEPORT)."""
    connector = resolve_connector(code=connector_code, port=port)
    if processes <= 1:
        _run_one(connector, host=host, port=port, reuse_port=False)
        return
    if port == 0 or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--processes needs a fixed --port and an OS with SO_REUSEPORT")
    # Fork before any thread or database connection exists: each child is a whole listener of its own,
    # and the kernel spreads new connections across them.
    connection.close()
    children: list[int] = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_one(connector, host=host, port=port, reuse_port=True)
            except BaseException:
                logger.exception("mllp: listener process failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or code
    if status:
        raise RuntimeError("an MLLP listener process exited with an error")


def _run_one(connector: Connector, *, host: str, port: int, reuse_port: bool) -> None:
    listener = MLLPListener(connector, host=host, port=port)
    listener.reuse_port = reuse_port
    listener.prepare()
    connection.close()  # the writer thread opens its own
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(listener.serve())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the event loop's own work is a large share of each message's cost."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
