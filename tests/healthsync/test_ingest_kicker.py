"""The worker kick's thread: one database connection for a run of kicks, given up when they stop or on flush."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from django.db import connection

from healthsync import ingest

pytestmark = pytest.mark.django_db(transaction=True)  # the kicker's thread has a connection of its own


class _Recording(ingest._Kicker):
    """A kicker whose enqueue notes the database connection it ran on instead of enqueueing."""

    def __init__(self, linger: float) -> None:
        super().__init__(0, linger=linger)
        self.seen: list[int] = []
        self.kicked = threading.Semaphore(0)

    def _enqueue(self) -> None:
        connection.ensure_connection()
        self.seen.append(id(connection.connection))
        self.kicked.release()


@pytest.fixture
def kicker() -> Iterator[_Recording]:
    recording = _Recording(linger=60)
    yield recording
    recording.flush()


def test_kicks_in_a_row_share_one_connection(kicker: _Recording) -> None:
    for _ in range(3):
        kicker()
        assert kicker.kicked.acquire(timeout=10)

    assert len(kicker.seen) == 3
    assert len(set(kicker.seen)) == 1


def test_flush_lets_the_thread_go_and_a_later_kick_is_still_served(kicker: _Recording) -> None:
    kicker()
    assert kicker.kicked.acquire(timeout=10)
    thread = kicker._thread
    assert thread is not None

    kicker.flush()

    assert not thread.is_alive()
    kicker()
    assert kicker.kicked.acquire(timeout=10)
    assert len(kicker.seen) == 2


def test_the_thread_leaves_once_kicks_stop() -> None:
    kicker = _Recording(linger=0.05)
    kicker()
    assert kicker.kicked.acquire(timeout=10)
    thread = kicker._thread
    assert thread is not None

    thread.join(timeout=10)

    assert not thread.is_alive()
    kicker()  # a new thread serves it
    assert kicker.kicked.acquire(timeout=10)
    kicker.flush()
