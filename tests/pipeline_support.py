"""Helpers shared by the pipeline, delivery and discharge-to-bill tests: seeded config, messages, simulators."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from django.db import connection
from django.test import TestCase
from django_q.conf import Conf

from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync.models import Connector, Message
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config


def store(raw: str | bytes, *, connector_code: str = "ehr-adt-mllp", message_type: str = "") -> Message:
    """Store a message as the listener would (status received), without the socket."""
    data = raw.encode() if isinstance(raw, str) else raw
    connector = Connector.objects.get(code=connector_code)
    control_id = ""
    if not message_type and data.startswith(b"MSH"):
        fields = data.split(b"\r", 1)[0].decode("latin-1").split("|")
        message_type = fields[8].rsplit("^", 1)[0] if len(fields) > 8 else ""
        control_id = fields[9] if len(fields) > 9 else ""
    return Message.objects.create(
        connector=connector,
        raw=data,
        sha256=hashlib.sha256(data).hexdigest(),
        control_id=control_id,
        message_type=message_type,
    )


def commits() -> AbstractContextManager:
    """Run on-commit callbacks (sends, enqueued tasks) at the end of the block, as a real commit would.

    Tests run inside a transaction that never commits; this stands in for the commit without the cost of
    transactional tests.
    """
    if connection.in_atomic_block:
        return TestCase.captureOnCommitCallbacks(execute=True)
    return nullcontext()


def feed(*raws: str) -> list[Message]:
    """Store messages and run the worker over them; returns them refreshed."""
    messages = [store(raw) for raw in raws]
    with commits():
        process_pending()
    for message in messages:
        message.refresh_from_db()
    return messages


@contextmanager
def destinations(*, retry_max_attempts: int = 3) -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    """Seed the reference config and point its RCM and ERP connectors at fresh simulators on free ports."""
    seed_reference_config()
    rcm, erp = RcmSimulator("127.0.0.1", 0).start(), ErpSimulator("127.0.0.1", 0).start()
    try:
        for code, sim in (("rcm-claims", rcm), ("erp-journals", erp)):
            connector = Connector.objects.get(code=code)
            connector.config = {**connector.config, "base_url": sim.url}
            connector.retry_backoff_seconds = 0
            connector.retry_max_attempts = retry_max_attempts
            connector.timeout_seconds = 5
            connector.save()
        yield rcm, erp
    finally:
        rcm.stop()
        erp.stop()


@contextmanager
def tasks_inline() -> Iterator[None]:
    """Run django-q2 tasks in the calling process and transaction (the documented sync mode)."""
    previous = Conf.SYNC
    Conf.SYNC = True
    try:
        yield
    finally:
        Conf.SYNC = previous
