"""Worker task: poll every enabled inbound FHIR connector that has a ``poll`` section (django-q2 schedule)."""

from __future__ import annotations

import logging

from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError

logger = logging.getLogger(__name__)

POLL_TASK = "connectors.fhir.tasks.poll_fhir_connectors"


def poll_fhir_connectors() -> dict[str, int]:
    """Poll each polling FHIR connector once; returns stored counts by connector code.

    One connector's failure (server down, credentials refused) is logged and does not stop the others; the
    next run starts again from the stored high water mark, so nothing is skipped.
    """
    from connectors.fhir.client import poll
    from healthsync.models import Connector

    results: dict[str, int] = {}
    connectors = Connector.objects.filter(
        protocol=Protocol.FHIR, direction=Direction.INBOUND, is_enabled=True, config__has_key="poll"
    )
    for connector in connectors:
        try:
            results[connector.code] = poll(connector).stored
        except ConnectorError as exc:
            logger.warning("fhir poll: connector %s failed: %s", connector.pk, exc.message)
            results[connector.code] = -1
    return results
