"""The processing benchmark's backlog looks like what the listener stores, dedupe keys included."""

from __future__ import annotations

import pytest

from healthsync.bench_processing import _bench_connector, build_backlog, load_backlog, remove_bench_data
from healthsync.models import Message
from healthsync.models.core import MessageKey

pytestmark = pytest.mark.django_db


def test_the_backlog_owns_its_dedupe_keys_and_gives_them_back_when_removed() -> None:
    connector = _bench_connector()
    load_backlog(build_backlog(9, prefix="BK"), connector)

    messages = dict(Message.objects.filter(connector=connector).values_list("dedupe_key", "id"))
    assert len(messages) == 9
    assert dict(MessageKey.objects.values_list("key", "message_id")) == messages

    remove_bench_data("BK", connector)

    assert not MessageKey.objects.exists() and not Message.objects.exists()
