from __future__ import annotations

import pytest

from healthsync.seed import seed_reference_config


@pytest.fixture
def reference(db: None) -> None:
    """The walking skeleton's systems, connectors, mappings, schemas and ownership."""
    seed_reference_config()
