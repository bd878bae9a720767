"""CI that works as written (issue 18 part 2): the composite action's steps run as a
workflow runner runs them, a wheel built with `python -m build` passes README's quickstart
in a fresh virtual environment, and the examples in examples/ci/ and docs/lint.md name
inputs, hooks and refs that exist.

The two tests that install opsdsl into a fresh venv take a minute or more each (they build
the package and install its dependencies with pip): they are marked `slow`, which CI
still runs (`.ci/run` runs everything); `-m "not slow"` leaves them out locally."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_copy import ROOT, copy_repo

ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
EXAMPLES = ROOT / "examples" / "ci"


# ---------------------------------------------------------------- a local workflow runner


class Runner:
    """Runs a composite action's steps the way the GitHub runner does: `${{ }}` in `env:`,
    `with:`, `working-directory:` and `if:`, `bash --noprofile --norc -eo pipefail` for
    `shell: bash`, GITHUB_OUTPUT/GITHUB_PATH files, step outputs. `uses:` steps are not
    run (they are other actions); they are recorded with their resolved `with:`."""

    def __init__(self, action_path: Path, workspace: Path, temp: Path, inputs: dict[str, str]) -> None:
        self.action_path, self.workspace, self.temp = action_path, workspace, temp
        defaults = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
        unknown = set(inputs) - set(defaults)
        assert not unknown, f"not inputs of action.yml: {unknown}"
        self.inputs = {**defaults, **inputs}
        self.outputs: dict[str, dict[str, str]] = {}
        self.path_file = temp / "github_path"
        self.path_file.touch()
        self.failed = False
        self.log: list[tuple[str, int | None, str]] = []  # (step name, exit code or None for uses, output)
        self.used: list[tuple[str, dict]] = []

    def value(self, expression: str) -> object:
        expression = expression.strip()
        if expression in ("always()",):
            return True
        if expression == "success()":
            return not self.failed
        if expression == "failure()":
            return self.failed
        for op in ("&&", "||"):
            if op in expression:
                parts = [self.value(p) for p in expression.split(op)]
                return all(parts) if op == "&&" else any(parts)
        for op in ("==", "!="):
            if op in expression:
                left, right = (self.value(p) for p in expression.split(op, 1))
                return (left == right) if op == "==" else (left != right)
        if expression.startswith("'") and expression.endswith("'"):
            return expression[1:-1]
        parts = expression.split(".")
        if parts[0] == "inputs":
            return self.inputs[parts[1]]
        if expression == "github.action_path":
            return str(self.action_path)
        if expression == "runner.temp":
            return str(self.temp)
        if parts[0] == "steps" and parts[2] == "outputs":
            return self.outputs.get(parts[1], {}).get(parts[3], "")
        raise AssertionError(f"expression the local runner does not know: {expression}")

    def substitute(self, text: str) -> str:
        return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(self.value(m.group(1))), str(text))

    def condition(self, step: dict) -> bool:
        condition = step.get("if")
        if condition is None:
            return not self.failed
        condition = str(condition).strip()
        if condition.startswith("${{") and condition.endswith("}}"):
            condition = condition[3:-2]
        if not re.search(r"\b(always|success|failure|cancelled)\(\)", condition):
            condition = f"success() && {condition}"
        return bool(self.value(condition))

    def run(self) -> None:
        for step in ACTION["runs"]["steps"]:
            name = step.get("name", step.get("id", "?"))
            if not self.condition(step):
                continue
            if "uses" in step:
                self.used.append((step["uses"], {k: self.substitute(v) for k, v in step.get("with", {}).items()}))
                self.log.append((name, None, ""))
                continue
            assert step["shell"] == "bash"
            output_file = self.temp / f"output-{len(self.log)}"
            output_file.touch()
            extra_path = [line for line in self.path_file.read_text().splitlines() if line]
            env = {
                **os.environ,
                "PATH": os.pathsep.join([*reversed(extra_path), os.environ["PATH"]]),
                "GITHUB_ACTION_PATH": str(self.action_path),
                "GITHUB_WORKSPACE": str(self.workspace),
                "GITHUB_OUTPUT": str(output_file),
                "GITHUB_PATH": str(self.path_file),
                "RUNNER_TEMP": str(self.temp),
                "CI": "true",
                "GITHUB_ACTIONS": "true",
                **{k: self.substitute(v) for k, v in step.get("env", {}).items()},
            }
            env.pop("VIRTUAL_ENV", None)
            script = self.temp / f"step-{len(self.log)}.sh"
            script.write_text(self.substitute(step["run"]))
            cwd = self.workspace / self.substitute(step.get("working-directory", "."))
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            self.log.append((name, result.returncode, result.stdout + result.stderr))
            if "id" in step:
                self.outputs[step["id"]] = dict(
                    line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line
                )
            if result.returncode != 0:
                self.failed = True

    def step(self, name: str) -> tuple[int | None, str]:
        found = [(code, out) for step, code, out in self.log if step == name]
        assert found, f"step {name!r} did not run: {[s for s, _, _ in self.log]}"
        return found[0]


def _host_python_on_path(temp: Path) -> dict:
    """`python3` on PATH is this test's interpreter (what actions/setup-python provides)."""
    bin_dir = temp / "python-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_the_action_runs_as_a_workflow_runner_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The action checked out as `uses: OWNER/opsdsl@main` would have it, a repository of
    packs, and the steps run in order: install from the action's checkout, lint with
    annotations and SARIF, test with JUnit, the verdict; then a broken pack fails it."""
    action_path = copy_repo(tmp_path / "action")
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    for name, value in _host_python_on_path(tmp_path).items():
        monkeypatch.setenv(name, value)
    workspace = tmp_path / "workspace"
    shutil.copytree(ROOT / "packs", workspace / "packs")

    clean = Runner(
        action_path,
        workspace,
        temp,
        {"python-version": "", "upload-sarif": "true", "test": "true", "test-paths": "packs/"},
    )
    clean.run()
    for step, code, out in clean.log:
        assert code in (0, None), f"{step} failed:\n{out}"
    assert clean.outputs["lint"] == {"exit-code": "0", "sarif": "opsdsl.sarif"}
    sarif = json.loads((workspace / "opsdsl.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    assert [uses for uses, _ in clean.used] == ["github/codeql-action/upload-sarif@v3"]
    assert (workspace / clean.used[0][1]["sarif_file"]).resolve() == (workspace / "opsdsl.sarif").resolve()
    assert clean.outputs["test"]["exit-code"] == "0"
    assert "<testsuites" in (workspace / "opsdsl-junit.xml").read_text()
    assert "packs clean, pack tests passed" in clean.step("Verdict")[1]

    # a typo: the lint step reports it (annotation, SARIF), the verdict fails the job
    pack = workspace / "packs" / "sev2.yaml"
    pack.write_text(pack.read_text().replace("timeout: 10s", "timout: 10s", 1))
    broken = Runner(action_path, workspace, temp, {"python-version": ""})
    broken.run()
    code, out = broken.step("opsdsl lint")
    assert code == 0 and broken.outputs["lint"]["exit-code"] == "1"
    assert re.search(r"^::error file=packs/sev2\.yaml,line=\d+,col=\d+.*title=OPS011 unknown-key::", out, re.M), out
    assert "error[OPS011]" in out  # the text report, for people reading the log
    assert [r["ruleId"] for r in json.loads((workspace / "opsdsl.sarif").read_text())["runs"][0]["results"]] == [
        "OPS011"
    ]
    assert broken.used == []  # upload-sarif is off by default
    assert broken.step("Verdict")[0] == 1
    assert "opsdsl test" not in [s for s, _, _ in broken.log]


def test_the_action_declares_what_its_steps_read():
    steps = ACTION["runs"]["steps"]
    assert ACTION["runs"]["using"] == "composite"
    text = (ROOT / "action.yml").read_text()
    for name in re.findall(r"inputs\.([a-z-]+)", text):
        assert name in ACTION["inputs"], name
    ids = {s.get("id") for s in steps}
    for step_id in re.findall(r"steps\.([a-z-]+)\.outputs", text):
        assert step_id in ids, step_id
    for step in steps:
        if "run" in step:
            assert step["shell"] == "bash"
            assert "${{" not in step["run"], "values reach scripts through env:, never pasted into the script"


# ---------------------------------------------------------------- the wheel and README's quickstart


@pytest.mark.slow
def test_a_built_wheel_passes_the_readme_quickstart_in_a_fresh_venv(tmp_path: Path):
    """`python -m build --wheel` on a clean copy, the wheel into a new venv (not the
    checkout: the quickstart runs from another folder), then README's quickstart commands
    with `opsdsl` from that venv."""
    source = copy_repo(tmp_path / "src")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("opsdsl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    # README's quickstart, with the venv's opsdsl, in a folder that holds only the example
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart") :]
    command = re.search(r"^    (python3 -m venv .*)$", quickstart, re.MULTILINE).group(1)
    opsdsl_parts = [part.strip() for part in command.split("&&") if ".venv/bin/opsdsl" in part]
    assert len(opsdsl_parts) == 2, command
    work = tmp_path / "work"
    shutil.copytree(source / "examples", work / "examples")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "OPSDSL_HOME", "PYTHONPATH")}
    for part in opsdsl_parts:
        argv = part.replace(".venv/bin/opsdsl", str(venv / "bin" / "opsdsl")).split()
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{part}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (work / ".opsdsl").is_dir()
    assert list((work / ".opsdsl").rglob("rca.md")), "the quickstart leaves an incident folder with the RCA report"
    # the data files travel in the wheel, not from a checkout
    schema_out = subprocess.run(
        [str(venv / "bin" / "opsdsl"), "schema"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(schema_out.stdout)["$schema"].startswith("https://json-schema.org/")
    # and the language server answers an editor's handshake (pygls came with the wheel)
    messages = b""
    for ident, method, params in (
        (1, "initialize", {"processId": None, "rootUri": None, "capabilities": {}}),
        (2, "shutdown", None),
    ):
        body = json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}).encode()
        messages += b"Content-Length: %d\r\n\r\n" % len(body) + body
    body = json.dumps({"jsonrpc": "2.0", "method": "exit"}).encode()
    messages += b"Content-Length: %d\r\n\r\n" % len(body) + body
    server = subprocess.run(
        [str(venv / "bin" / "opsdsl"), "lsp"], input=messages, cwd=work, env=env, capture_output=True, timeout=120
    )
    assert server.returncode == 0, server.stderr.decode()[-3000:]
    assert b'"definitionProvider": true' in server.stdout or b'"definitionProvider":true' in server.stdout


# ---------------------------------------------------------------- examples/ci and docs/lint.md


def test_the_example_workflow_uses_the_action_with_inputs_it_has():
    workflow = yaml.safe_load((EXAMPLES / "github-workflow.yml").read_text())
    (job,) = workflow["jobs"].values()
    ours = [s for s in job["steps"] if str(s.get("uses", "")).startswith("OWNER/opsdsl@")]
    assert len(ours) == 1
    assert ours[0]["uses"] == "OWNER/opsdsl@main"
    assert set(ours[0]["with"]) <= set(ACTION["inputs"])
    assert workflow["permissions"]["security-events"] == "write"


def test_the_gitlab_example_commands_run_and_write_the_reports_gitlab_reads(tmp_path: Path):
    """The `script:` lines of examples/ci/gitlab-ci.yml, in a repository of packs, with a
    finding: the code-quality report and the JUnit report are written, the lint job fails."""
    ci = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    install = ci[".opsdsl"]["before_script"][0]
    assert "git+${OPSDSL_GIT}@${OPSDSL_REF}" in install and ci["variables"]["OPSDSL_REF"] == "main"
    shutil.copytree(ROOT / "packs", tmp_path / "packs")
    pack = tmp_path / "packs" / "sev3.yaml"
    pack.write_text(pack.read_text().replace("cooldown: 30m", "cooldwn: 30m", 1))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    codes = {}
    for job in ("opsdsl-lint", "opsdsl-test"):
        code = 0
        for line in ci[job]["script"]:
            result = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            code = code or result.returncode
        codes[job] = code
        for kind, report in ci[job]["artifacts"]["reports"].items():
            assert (tmp_path / report).is_file(), (job, kind)
    assert codes == {"opsdsl-lint": 1, "opsdsl-test": 1}  # the typo breaks the pack, and so its tests
    issues = json.loads((tmp_path / "gl-code-quality-report.json").read_text())
    assert [(i["check_name"], i["location"]["path"]) for i in issues] == [("OPS011", "packs/sev3.yaml")]
    assert "<testsuites" in (tmp_path / "opsdsl-junit.xml").read_text()


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_pre_commit_instructions_name_a_hook_and_a_ref_that_exist():
    hooks = {h["id"] for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    shown = [yaml.safe_load((EXAMPLES / "pre-commit-config.yaml").read_text())]
    lint_doc = (ROOT / "docs" / "lint.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", lint_doc, re.DOTALL):
        if block.lstrip().startswith("repos:"):
            shown.append(yaml.safe_load(block))
    revs = set()
    for config in shown:
        for repo in config["repos"]:
            if repo["repo"] == "local":
                continue
            revs.add(repo["rev"])
            assert {h["id"] for h in repo["hooks"]} <= hooks
    assert revs == {"main"}
    refs = {
        ref
        for text in (lint_doc, (EXAMPLES / "github-workflow.yml").read_text())
        for ref in re.findall(r"OWNER/opsdsl@([\w./-]+)", text)
    }
    refs |= set(re.findall(r"ref: ([\w./-]+)", lint_doc))
    assert refs <= {"main"}, refs
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: cannot check that the branch exists")
    assert (
        _git("rev-parse", "--verify", "--quiet", "refs/heads/main").returncode == 0
        or _git("rev-parse", "--verify", "--quiet", "refs/remotes/origin/main").returncode == 0
    )
