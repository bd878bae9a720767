"""Every runtime test runs on both state backends (issue 16): SQLite in the test's state
dir, and PostgreSQL, selected as a user selects it, by $OPSDSL_DATABASE, which the
processes a test starts inherit too."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgresql"], autouse=True)
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgresql":
        monkeypatch.setenv("OPSDSL_DATABASE", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("OPSDSL_DATABASE", raising=False)
    return request.param
