"""`python manage.py run_worker`: the fast path for processing messages at scale, beside django-q2.

    python manage.py run_worker [--lanes clinical,financial,batch] [--batch N] [--once] [--idle-sleep S]

A long-running loop: claim a batch (clinical lane first, per-key order held, see healthsync/pipeline.py),
process it, repeat; sleep briefly when there is nothing to claim. Run as many as the database allows, on any
number of hosts sharing it: claims never overlap and events of one encounter are applied in order.
`--lanes` limits the lanes this worker claims from (e.g. a dedicated clinical worker). `--once` drains the
queue and exits once nothing is waiting. SIGTERM or SIGINT lets the current batch finish, then the worker
exits; a worker killed outright leaves its claims to `release_stale_claims` after HEALTHSYNC_CLAIM_TIMEOUT
seconds. django-q2's schedules keep running process_pending every minute as a safety net.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from healthsync import pipeline
from healthsync.choices import Lane
from healthsync.models import Message

logger = logging.getLogger(__name__)

# Stale claims are looked for at most this often: a dead worker's messages come back within the claim
# timeout plus this.
RELEASE_EVERY_SECONDS = 5.0


class Command(BaseCommand):
    help = "Process received messages in a loop (SIGTERM finishes the current batch, then exits)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--lanes", default="", help="Comma-separated lanes to claim from (default: all).")
        parser.add_argument("--batch", type=int, default=0, help="Messages per claim (default: settings).")
        parser.add_argument("--once", action="store_true", help="Drain the queue, then exit.")
        parser.add_argument("--idle-sleep", type=float, default=0.2, help="Seconds to sleep when idle.")

    def handle(self, *args: Any, **options: Any) -> None:
        lanes = [lane.strip() for lane in options["lanes"].split(",") if lane.strip()] or None
        unknown = [lane for lane in lanes or [] if lane not in Lane.values]
        if unknown:
            raise CommandError(f"Unknown lane(s): {', '.join(unknown)}; choose from {', '.join(Lane.values)}")
        batch = options["batch"] or settings.HEALTHSYNC_BATCH_SIZE
        if batch < 1:
            raise CommandError("--batch must be at least 1")
        # What start-up loaded (modules, settings, registries) lives as long as the process: keep the
        # garbage collector's full passes from walking it again and again while batches run.
        gc.freeze()
        handled = run(lanes=lanes, batch=batch, once=options["once"], idle_sleep=options["idle_sleep"])
        self.stdout.write(f"run_worker: {handled} messages handled")


class _Stop:
    """Set by SIGTERM/SIGINT; the loop checks it between batches."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def run(*, lanes: list[str] | None, batch: int, once: bool, idle_sleep: float = 0.2) -> int:
    """The worker loop; returns how many messages it handled."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker = pipeline.worker_name()
    logger.info("worker %s started (lanes: %s, batch %s)", worker, ",".join(lanes or ["all"]), batch)
    handled = 0
    last_release = 0.0
    while not stop.requested:
        close_old_connections()
        if time.monotonic() - last_release >= RELEASE_EVERY_SECONDS:
            pipeline.release_stale_claims()
            last_release = time.monotonic()
        ids = pipeline.claim_batch(batch, lanes=lanes, worker=worker)
        if ids:
            handled += pipeline.process_batch(ids, worker=worker)
            continue
        if once and not _waiting(lanes):
            break
        time.sleep(idle_sleep)
    logger.info("worker %s stopped after %s messages", worker, handled)
    return handled


def _waiting(lanes: list[str] | None) -> bool:
    # In --once mode work held by another worker (or a dead one, until released) is still waiting.
    query = Message.objects.filter(status__in=["received", "processing"])
    if lanes:
        query = query.filter(lane__in=lanes)
    return query.exists()
