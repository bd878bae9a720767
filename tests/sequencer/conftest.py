"""Fixtures of the journal + sequencer tests (real PostgreSQL: `pg_url`, tests/conftest.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def journal_url(pg_url: str) -> str:
    """A migrated, emptied database (migration 0004 makes the journal)."""
    return pg_url
