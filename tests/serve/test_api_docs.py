"""docs/api.md's curl examples, run as written (bash, curl, jq) against a real `opsdsl serve`.

The blocks after `<!-- api-examples -->` and `<!-- api-examples-incident -->` are run with
`bash -euo pipefail`; only the server's URL and state directory are put in. Skipped when
curl or jq is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import Server

ROOT = Path(__file__).resolve().parents[2]
PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: api-docs, version: 1.0.0, owner: sre}
triggers:
  deploy: {on: event, when: event.name == "deploy"}
hooks:
  # opsdsl: ignore[OPS042]: every deploy starts a run
  onDeploy: {trigger: deploy, run: restart}
playbooks:
  restart:
    severity: SEV-2
    steps:
      - id: approve_restart
        action: approval
        with: {message: Restart the api service?}
        timeout: 1h
      - id: restart
        needs: [approve_restart]
        action: assert
        with: {that: "true", message: restarted}
"""


def block(marker: str) -> str:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    found = re.search(re.escape(marker) + r"\n```sh\n(.*?)```", text, re.S)
    assert found, f"docs/api.md has no {marker} block"
    return found.group(1)


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_curl_examples_work_as_written(tmp_path: Path) -> None:
    pack = tmp_path / "api-docs.yaml"
    pack.write_text(PACK, encoding="utf-8")
    server = Server(tmp_path, pack=pack).start()
    try:
        script = block("<!-- api-examples -->")
        assert "url=http://127.0.0.1:8095\n" in script and "export OPSDSL_HOME=/var/lib/opsdsl" in script
        script = script.replace("url=http://127.0.0.1:8095", f"url={server.url}")
        script = script.replace("export OPSDSL_HOME=/var/lib/opsdsl", f"export OPSDSL_HOME={server.state}")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        between = (  # the test waits for the run to end, as the docs' "once the run is over" says
            'echo "RUN=$run"\n'
            'until curl -sS "$url/v1/runs/$run" -H "$auth" | jq -e \'.status == "succeeded"\' >/dev/null; do sleep 0.2; done\n'
            "echo INCIDENT\n"
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script + between + block("<!-- api-examples-incident -->")],
            capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        first, second = done.stdout.split("\nINCIDENT\n")
        lines = first.strip().splitlines()
        run = lines[-1].removeprefix("RUN=")
        answers = [json.loads(line) for line in lines[:-1] if line.startswith(("{", "["))]
        assert answers[0]["name"] == "alice" and answers[0]["role"] == "approver"
        assert answers[1]["accepted"] == 1 and answers[1]["source"] == "user:alice"
        assert not any(isinstance(a, dict) and "status" in a and "detail" in a for a in answers), answers
        approved = next(a for a in answers if isinstance(a, dict) and a.get("decision") == "approve")
        assert approved["run"] == run and approved["by"] == "alice"
        assert server.query("SELECT status FROM runs WHERE id = ?", run)[0][0] == "succeeded"
        assert "verified" in second and "\n# " in "\n" + second  # the RCA's heading; the archive checked
    finally:
        server.close()
