"""Fixtures of the fault scenarios: the Kernel API stand-in and a Cluster of real opsdsl
processes on the test's own migrated PostgreSQL database (tests/conftest.py `pg_url`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster
from kernel_api import KernelAPI


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, api: KernelAPI) -> Iterator[Cluster]:
    found = Cluster(tmp_path, pg_url, api)
    try:
        yield found
    finally:
        found.close()
