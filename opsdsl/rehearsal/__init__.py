"""Rehearsals (`opsdsl test`): run playbooks against mocked actions, on a virtual clock.

A test file (`*.test.yaml`, or `*.test.ops`) names a pack and lists cases: what starts the
run, what the actions return, who answers approvals, and what must happen. Each case runs
through the real compiler, policy gate and scheduler; only the actions are replaced, and
time is simulated, so a case with `wait: 1h` and minutes of backoff takes milliseconds.
Reference: docs/testing.md; the file format: schemas/test.schema.json.

One module per stage, in the order `session.run_tests` calls them:

- `loading`  find test files; read them (YAML or `ops_form`); check the schema
- `model`    the test file as frozen values, each part with its path
- `checks`   the cases against the compiled plan: OPS062–066, before anything runs
- `execute`  one case: a fresh state directory, the runtime, `mocks`, `clock`
- `facts`    what happened, from the run's ledger entries
- `expect`   expectations against facts: located failures with diffs
- `report`   text, JSON, JUnit XML

and, on request (`--coverage`), `coverage` (what no case exercised, from the facts) and
`coverage_report` (its table and JSON document, which lint rule OPS050 reads).
"""

from __future__ import annotations

from .session import Options, SessionResult, run_tests

__all__ = ["Options", "SessionResult", "run_tests"]
