"""The EventStream on NATS JetStream (nats-py).

nats-py is asyncio; the adapter and the consumer command are synchronous. One event-loop thread per process
runs every coroutine, and connections are kept per server list, so a delivery task sending many events pays
for one connection, not one each. The thread is recreated after a fork (django-q2 forks its workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from connectors.streams.base import DEFAULT_PREFIX, DEFAULT_STREAM, BatchHandler, PublishAck, StreamMessage
from healthsync.errors import ConnectorError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Loop:
    """An event loop on a daemon thread; `run` blocks the caller until the coroutine is done."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="nats-loop", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


_loop: _Loop | None = None
_clients: dict[tuple[str, ...], Client] = {}
_lock = threading.Lock()


def _runner() -> _Loop:
    global _loop
    with _lock:
        if _loop is None or _loop.pid != os.getpid():
            _loop = _Loop()
            _clients.clear()
        return _loop


class NatsEventStream:
    """JetStream stream `stream` holding the subjects `<prefix>.>`."""

    def __init__(
        self,
        servers: list[str],
        *,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
        max_age_days: float | None = None,
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.prefix = prefix
        self.timeout = timeout
        self.max_age_days = max_age_days
        self._ensured = False

    # Plumbing ------------------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], extra: float = 0.0) -> T:
        where = ", ".join(self.servers)
        try:
            return _runner().run(coro, self.timeout * 2 + extra)
        except ConnectorError:
            raise
        except (TimeoutError, NatsTimeout) as exc:
            raise ConnectorError(f"NATS at {where} did not answer in time") from exc
        except (NatsError, OSError) as exc:
            raise ConnectorError(f"NATS at {where}: {exc or type(exc).__name__}") from exc

    async def _client(self) -> Client:
        key = tuple(self.servers)
        client = _clients.get(key)
        if client is not None and client.is_connected:
            return client
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        client = await nats.connect(
            servers=self.servers,
            connect_timeout=self.timeout,
            # Fail fast: a delivery that cannot reach the broker is retried with backoff by the delivery runtime,
            # and a client found disconnected is replaced on the next call.
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
        )
        _clients[key] = client
        return client

    async def _ensure(self) -> None:
        if self._ensured:
            return
        js = (await self._client()).jetstream(timeout=self.timeout)
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.max_age_days * 86400 if self.max_age_days else None,
                duplicate_window=120.0,
            )
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                raise ConnectorError(
                    f"NATS refused to create stream {self.stream}: {exc.description}", permanent=True
                ) from exc
        self._ensured = True

    # EventStream ---------------------------------------------------------------------------------------

    def ensure_stream(self) -> None:
        self._run(self._ensure())

    def publish(self, subject: str, data: bytes, *, message_id: str) -> PublishAck:
        async def go() -> PublishAck:
            await self._ensure()
            js = (await self._client()).jetstream(timeout=self.timeout)
            try:
                ack = await js.publish(subject, data, stream=self.stream, headers={"Nats-Msg-Id": message_id})
            except Exception:
                # The stream may have been deleted meanwhile: look (and create) again on the next attempt.
                self._ensured = False
                raise
            return PublishAck(stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate))

        return self._run(go())

    def consume(
        self, *, durable: str, subjects: list[str], batch: int, timeout: float, handle: BatchHandler
    ) -> int:
        async def fetch() -> list[Any]:
            await self._ensure()
            js = (await self._client()).jetstream(timeout=self.timeout)
            if not await self._has(js, durable):
                config = api.ConsumerConfig(
                    durable_name=durable,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.ALL,
                    filter_subjects=subjects if len(subjects) > 1 else None,
                    filter_subject=subjects[0] if len(subjects) == 1 else None,
                    ack_wait=max(30.0, timeout * 4),
                )
                await js.add_consumer(self.stream, config)
            sub = await js.pull_subscribe_bind(durable, self.stream)
            try:
                return list(await sub.fetch(batch, timeout=timeout))
            except (NatsTimeout, TimeoutError):
                return []
            finally:
                # The durable consumer (and its position) outlives the subscription; acks still reach it.
                await sub.unsubscribe()

        async def settle(msgs: list[Any], ok: bool) -> None:
            # Plain acks and one flush: an ack lost on the way means a redelivery, which the store dedupes.
            for msg in msgs:
                await (msg.ack() if ok else msg.nak())
            await (await self._client()).flush(timeout=self.timeout)

        msgs = self._run(fetch(), extra=timeout)
        if not msgs:
            return 0
        # The handler runs on the caller's thread, where its database connection lives.
        try:
            handle([_message(m) for m in msgs])
        except Exception:
            self._run(settle(msgs, ok=False))
            raise
        self._run(settle(msgs, ok=True))
        return len(msgs)

    async def _has(self, js: Any, durable: str) -> bool:
        try:
            await js.consumer_info(self.stream, durable)
        except NotFoundError:
            return False
        return True

    def replay(
        self, *, subjects: list[str], start_sequence: int, limit: int, timeout: float
    ) -> list[StreamMessage]:
        async def go() -> list[StreamMessage]:
            await self._ensure()
            js = (await self._client()).jetstream(timeout=self.timeout)
            config = api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, start_sequence),
                inactive_threshold=30.0,
            )
            subject = subjects[0] if len(subjects) == 1 else f"{self.prefix}.>"
            sub = await js.pull_subscribe(subject, durable=None, stream=self.stream, config=config)
            out: list[StreamMessage] = []
            try:
                while len(out) < limit:
                    try:
                        msgs = await sub.fetch(limit - len(out), timeout=timeout)
                    except (NatsTimeout, TimeoutError):  # nats-py raises either, depending on the path
                        break
                    out += [m for m in map(_message, msgs) if _matches(m.subject, subjects)]
            finally:
                await sub.unsubscribe()
            return out[:limit]

        return self._run(go(), extra=timeout * 4)

    def delete_stream(self) -> None:
        """Remove the stream and everything in it (tests, decommissioning)."""

        async def go() -> None:
            js = (await self._client()).jetstream(timeout=self.timeout)
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(self.stream)
            self._ensured = False

        self._run(go())

    def close(self) -> None:
        async def go() -> None:
            client = _clients.pop(tuple(self.servers), None)
            if client is not None:
                await client.close()

        self._run(go())


def _message(msg: Any) -> StreamMessage:
    return StreamMessage(
        subject=msg.subject,
        data=bytes(msg.data),
        sequence=int(msg.metadata.sequence.stream),
        headers={str(k): str(v) for k, v in (msg.headers or {}).items()},
    )


def _matches(subject: str, filters: list[str]) -> bool:
    """NATS subject matching (`*` one token, `>` the rest), for replays over several filters."""
    tokens = subject.split(".")
    for pattern in filters:
        parts = pattern.split(".")
        for i, part in enumerate(parts):
            if part == ">":
                return True
            if i >= len(tokens) or (part != "*" and part != tokens[i]):
                break
        else:
            if len(parts) == len(tokens):
                return True
    return False
