"""A secret given with `--secret NAME=env:VAR` flows everywhere a run writes, and is found
nowhere: not whole, not as a piece left at a cut. Real `opsdsl run --pack` subprocess, a
real Kernel API on 127.0.0.1, real programs; then every byte under the state directory
(the SQLite database and its WAL included, plans, incident folders, evidence) and the
captured stdout and stderr are searched.

The secret reaches: a shell step's output, printed three times past its 1 KiB limit so
the cut falls inside it; a failing http.request whose URL carries it; an evidence command
that prints it and the first 15 characters of it; and (its own playbook, until the
scheduler redacts report.rca's outputs) report.rca's title and summary.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_api import KernelAPI, Result, cli_env, dump_state, ledger_rows, opsdsl, param_args

from opsdsl.runtime.secrets import fragment_floor

SECRET = "Zq7kt9f8e7d6c5b4aXw31vN"  # nothing in a pack or a plan spells any 6 characters of it

PACK = textwrap.dedent(
    """\
    apiVersion: opsdsl/v1
    kind: Pack
    metadata: {name: e2e-redaction, version: 1.0.0, owner: sre}
    params:
      kernel_url: {type: string, default: "http://127.0.0.1:9"}
      python: {type: string, default: python3}
    playbooks:
      leak-everywhere:
        severity: SEV-3
        steps:
          - id: show
            action: shell
            with:
              argv: ["${{ params.python }}", "-c", "import os, sys; sys.stdout.write('y' * 1010 + os.environ['TOKEN'] * 3)"]
              env: {TOKEN: "${{ secrets.api_token }}"}
              output_limit: 1024
            timeout: 20s
          - id: call
            continue_on_error: true
            action: http.request
            with:
              method: POST
              url: "${{ params.kernel_url }}/v1/fail?auth=${{ secrets.api_token }}"
            timeout: 10s
          - id: snapshot
            action: evidence.collect
            with:
              name: snapshot
              commands:
                - ["${{ params.python }}", "-c", "import sys; print('token', sys.argv[1]); sys.stderr.write(sys.argv[1][:15])", "${{ secrets.api_token }}"]
            timeout: 20s
        finally:
          - id: rca
            action: report.rca
            with:
              title: Rotated
              summary: "printed ${{ steps.show.outputs.stdout }}"
      secret-in-the-report:
        severity: SEV-3
        steps:
          - id: show
            action: shell
            with:
              argv: ["${{ params.python }}", "-c", "print('ok')"]
            timeout: 20s
        finally:
          - id: rca
            action: report.rca
            with:
              title: "Rotated ${{ secrets.api_token }}"
              summary: "token ${{ secrets.api_token }}"
    """
)


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


def pieces(secret: str) -> list[bytes]:
    """The secret, and every head and tail of it long enough to be masked at a cut."""
    floor = fragment_floor(len(secret))
    heads = [secret[:size] for size in range(floor, len(secret) + 1)]
    tails = [secret[-size:] for size in range(floor, len(secret))]
    return [piece.encode() for piece in heads + tails]


def leaks(state: Path, result: Result) -> list[str]:
    found = []
    captured = (result.stdout + result.stderr).encode()
    for piece in pieces(SECRET):
        if piece in captured:
            found.append(f"output: {piece.decode()!r}")
        for path in sorted(state.rglob("*")):
            if path.is_file() and piece in path.read_bytes():
                found.append(f"{path.relative_to(state)}: {piece.decode()!r}")
    return found


def run_playbook(api: KernelAPI, tmp_path: Path, playbook: str) -> tuple[Path, Result]:
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    result = opsdsl(
        "run",
        "--pack",
        pack,
        "--playbook",
        playbook,
        "--state-dir",
        state,
        "--log-format",
        "json",
        "--secret",
        "api_token=env:E2E_API_TOKEN",
        *param_args(kernel_url=api.url, python=sys.executable),
        env=cli_env(E2E_API_TOKEN=SECRET),
    )
    assert result.code == 0, result.stdout + result.stderr
    return state, result


def assert_nowhere(state: Path, result: Result) -> None:
    """No piece of the secret in any file under `state` nor in the output; the database is
    read through SQLite too, in case a page is only in the WAL."""
    dumped = dump_state(state)
    assert [piece for piece in pieces(SECRET) if piece.decode() in dumped] == []
    assert leaks(state, result) == []


def test_a_secret_reaches_outputs_errors_and_evidence_and_is_found_in_none(api: KernelAPI, tmp_path: Path) -> None:
    state, result = run_playbook(api, tmp_path, "leak-everywhere")

    # The secret really went out: to the program, the server and the evidence command.
    (call,) = api.seen("POST", "/v1/fail")
    assert call.query == {"auth": SECRET}
    (show,) = [row["data"] for row in ledger_rows(state, "step.succeeded") if row["data"]["step"] == "show"]
    assert show["outputs"]["truncated"] is True
    assert show["outputs"]["stdout"] == "y" * 1010 + "***"
    (failed,) = [row["data"] for row in ledger_rows(state, "step.failed") if row["data"]["step"] == "call"]
    assert "auth=***" in failed["error"]
    folder = Path(result.end["incident_folder"])
    evidence = sorted((folder / "evidence" / "snapshot").iterdir())
    assert [path.read_text() for path in evidence if path.name.endswith(".stdout")] == ["token ***\n"]
    assert [path.read_text() for path in evidence if path.name.endswith(".stderr")] == ["***"]
    assert "printed " + "y" * 1010 + "***" in (folder / "rca.md").read_text()
    assert_nowhere(state, result)


def test_a_secret_in_the_rca_title_and_summary_is_found_nowhere(api: KernelAPI, tmp_path: Path) -> None:
    state, result = run_playbook(api, tmp_path, "secret-in-the-report")

    rca = (Path(result.end["incident_folder"]) / "rca.md").read_text()
    assert rca.startswith("# Rotated ***\n")
    assert "token ***" in rca
    assert_nowhere(state, result)
