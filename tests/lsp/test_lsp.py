"""`opsdsl lsp` as an editor drives it: a real server process, real LSP messages over its
stdin/stdout, on a temporary copy of a workspace (a pack, its pack test, a policy pack).

Answers are compared with a golden file (`tests/fixtures/lsp/session.golden.json`):
regenerate it with `pytest --update-golden` and read the diff like any other change."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_client import Client, LspError, position_of

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "lsp"
GOLDEN = FIXTURES / "session.golden.json"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    for name in ("pack.yaml", "pack.test.yaml"):
        shutil.copy(FIXTURES / name, root / name)
    shutil.copy(ROOT / "packs" / "org-policies.yaml", root / "org-policies.yaml")
    return root


@pytest.fixture(scope="module")
def client(workspace: Path):
    c = Client(workspace)
    c.open("pack.yaml")
    assert c.diagnostics("pack.yaml") == []
    yield c
    assert c.close() == 0


def _labels(result) -> list[str]:
    items = result["items"] if isinstance(result, dict) else result
    return sorted(item["label"] for item in items)


def _lint_json(cwd: Path, name: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "opsdsl", "lint", "--format", "json", "."],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [d for d in json.loads(out.stdout)["diagnostics"] if d["file"] == name]


# ---------------------------------------------------------------- diagnostics


BROKEN = {
    "typo in a step key": ("timeout: 10s", "timout: 10s"),
    "unknown trigger": ("trigger: latency", "trigger: latncy"),
    "missing cooldown": ("    cooldown: 10m\n", ""),
    "network step without timeout": ("        timeout: 5s\n", ""),
    "step that is not an ancestor": ("steps.scale.status }}", "steps.escalate.status }}"),
    "bad expression": ("> params.limit", "> > params.limit"),
    "yaml syntax": ("severity: SEV-2\n    inputs:", "severity: SEV-2\n   inputs: ["),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_diagnostics_are_lints_codes_messages_ranges_and_hints(case: str, client: Client, workspace: Path):
    old, new = BROKEN[case]
    text = (FIXTURES / "pack.yaml").read_text()
    assert old in text
    broken = text.replace(old, new, 1)
    client.change("pack.yaml", broken)
    got = client.diagnostics("pack.yaml")
    client.change("pack.yaml", text)
    assert client.diagnostics("pack.yaml") == []

    # what `opsdsl lint` says about the same text on disk, the policy pack beside it
    lint_dir = workspace.parent / f"lint-{case.replace(' ', '-')}"
    lint_dir.mkdir()
    (lint_dir / "pack.yaml").write_text(broken)
    shutil.copy(workspace / "org-policies.yaml", lint_dir)
    expected = _lint_json(lint_dir, "pack.yaml")
    assert expected, "the broken pack should have findings"
    assert [
        (
            d["code"],
            d["message"] + (f"\nhint: {d['hint']}" if d["hint"] else ""),
            (d["line"] - 1, d["column"] - 1),
            (d["end_line"] - 1, d["end_column"] - 1),
            "error" if d["severity"] == "error" else "warning",
        )
        for d in expected
    ] == [
        (
            d["code"],
            d["message"],
            (d["range"]["start"]["line"], d["range"]["start"]["character"]),
            (d["range"]["end"]["line"], d["range"]["end"]["character"]),
            "error" if d["severity"] == 1 else "warning",
        )
        for d in got
    ]
    assert all(d["source"] == "opsdsl" for d in got)


def test_policy_packs_in_the_workspace_are_in_scope_as_lint_sees_them(tmp_path: Path):
    """A high-risk step without approval or compensation: OPS040, unless a policy pack
    in the workspace requires an approval for it (as `opsdsl lint packs/` decides)."""
    pack = (
        (FIXTURES / "pack.yaml")
        .read_text()
        .replace("        needs: [scale]\n", "        needs: [scale]\n        risk: high\n")
    )
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    for folder in (alone, beside):
        folder.mkdir()
        (folder / "pack.yaml").write_text(pack)
    shutil.copy(ROOT / "packs" / "org-policies.yaml", beside)
    for folder in (alone, beside):
        c = Client(folder)
        try:
            c.open("pack.yaml")
            codes = [d["code"] for d in c.diagnostics("pack.yaml")]
        finally:
            c.close()
        assert codes == [d["code"] for d in _lint_json(folder, "pack.yaml")]
        assert ("OPS040" in codes) == (folder is alone)


def test_half_typed_input_never_crashes_the_server(workspace: Path):
    """Every prefix of the pack (cut every 41 characters), then garbage: the server answers
    each version with lint's diagnostics and is alive at the end."""
    text = (FIXTURES / "pack.yaml").read_text()
    c = Client(workspace)
    try:
        c.open("typing.yaml", "")
        c.diagnostics("typing.yaml")
        cuts = [text[:i] for i in range(0, len(text), 41)]
        garbage = [
            "{{{{",
            "- - - -",
            "kind: Pack\nplaybooks: {a: {steps: [{id: 1, action: [x]}]}}",
            "a: &x [*x]",
            "\t\tkey:\n\t- x",
            "kind: Pack\n" + "[" * 5000,
            "playbooks:\n  p:\n    steps:\n      - id: s\n        when: ${{ ((( }}\n",
            "\x00\ufeff\ud800",
        ]
        for version in cuts + garbage:
            c.change("typing.yaml", version)
            for i in range(0, len(version), max(1, len(version) // 3)):
                line, col = version[:i].count("\n"), i - (version.rfind("\n", 0, i) + 1)
                c.request("textDocument/completion", c.at("typing.yaml", line, col))
                c.request("textDocument/hover", c.at("typing.yaml", line, col))
        diagnostics = c.diagnostics("typing.yaml")
        assert diagnostics and all(d["source"] == "opsdsl" for d in diagnostics)
        c.change("typing.yaml", text)
        assert c.diagnostics("typing.yaml") == []
    finally:
        assert c.close() == 0


def test_a_burst_of_edits_is_linted_once_for_the_last_version(workspace: Path):
    c = Client(workspace)
    try:
        text = (FIXTURES / "pack.yaml").read_text()
        c.open("burst.yaml", text)
        c.diagnostics("burst.yaml")
        for i in range(30):
            c.change("burst.yaml", text.replace("timeout: 10s", f"timeout: {i + 1}s"))
        c.change("burst.yaml", text.replace("timeout: 10s", "timout: 10s", 1))
        assert [d["code"] for d in c.diagnostics("burst.yaml")] == ["OPS011"]
        published = [
            n
            for n in c.notifications
            if n["method"] == "textDocument/publishDiagnostics" and n["params"]["uri"].endswith("burst.yaml")
        ]
        assert len(published) < 10  # 31 changes, a handful of lints
    finally:
        c.close()


def test_utf16_columns_count_characters_outside_the_bmp_twice(workspace: Path):
    text = (
        (FIXTURES / "pack.yaml")
        .read_text()
        .replace(
            "{name: editors, version: 1.0.0, owner: sre}",
            "{name: editors, version: 1.0.0, owner: sre, description: 🚨🚨, colour: red}",
        )
    )
    for encoding, extra in ((None, 2), ("utf-32", 0)):  # two emoji: 2 UTF-16 units each, 1 code point each
        c = Client(workspace, encoding=encoding)
        try:
            assert c.initialize_result["capabilities"]["positionEncoding"] == (encoding or "utf-16")
            c.open("emoji.yaml", text)
            (d,) = c.diagnostics("emoji.yaml")
        finally:
            c.close()
        assert d["code"] == "OPS011"
        line = text.splitlines()[d["range"]["start"]["line"]]
        assert d["range"]["start"]["character"] == line.index("colour") + extra
        assert d["range"]["end"]["character"] == line.index("colour") + extra + len("colour")


# ---------------------------------------------------------------- the golden session


def _session(client: Client, workspace: Path) -> dict:
    """Every request an author makes on the fixture pack, answered."""
    text = (FIXTURES / "pack.yaml").read_text()
    out: dict[str, object] = {}

    def complete_after(label: str, before: str, typed: str) -> None:
        """Insert `typed` right after the first `before`, ask for completion at its end."""
        index = text.index(before) + len(before)
        edited = text[:index] + typed + text[index:]
        client.change("pack.yaml", edited)
        end = index + len(typed)
        line, col = edited.count("\n", 0, end), end - (edited.rfind("\n", 0, end) + 1)
        out[f"completion: {label}"] = _labels(
            client.request("textDocument/completion", client.at("pack.yaml", line, col))
        )

    complete_after("keys of a step", "        timeout: 10s", "\n        ")
    complete_after("action names", "      - id: tell\n        action: ", "")
    complete_after("with: keys of http.request", "          method: PUT", "\n          ")
    complete_after("steps. in escalate (ancestors only)", 'inputs: {why: "${{ ', "steps.")
    complete_after("steps. in scale (ancestors only)", "        when: ", "steps.")
    complete_after("steps. in a trigger (none)", "    when: ", "steps.")
    complete_after("fields of steps.inspect.", "        when: ", "steps.inspect.")
    complete_after("keys of a new step", "        timeout: 10s", "\n      - ")
    complete_after("with: keys of playbook.call", "with: {playbook: page, ", "")
    complete_after("params.", "when: steps.inspect.outputs.json.p95_ms > ", "params.")
    complete_after("inputs. of respond", 'url: "${{ params.kernel_url }}/v1/pool', "${{ inputs.")
    complete_after("inputs. of page", "paging: ${{ ", "inputs.")
    complete_after("needs: step ids", "needs: [scale", ", ")
    complete_after("hook run: playbooks", "    run: ", "")
    complete_after("hook trigger: triggers", "    trigger: ", "")
    complete_after("playbook.call playbook", "with: {playbook: ", "")
    complete_after("risk values", "        timeout: 10s", "\n        risk: ")
    client.change("pack.yaml", text)
    client.diagnostics("pack.yaml")

    def hover(label: str, needle: str, offset: int = 0, nth: int = 0) -> None:
        line, col = position_of(text, needle, nth, offset)
        result = client.request("textDocument/hover", client.at("pack.yaml", line, col))
        out[f"hover: {label}"] = result and {"markdown": result["contents"]["value"], "range": result["range"]}

    hover("key cooldown", "cooldown: 10m", 2)
    hover("action http.request", "action: http.request", 12)
    hover("key timeout with resolved defaults", "timeout: 10s", 2)
    hover("step id of escalate (resolved defaults)", "- id: escalate", 3)
    hover("a step used in needs:", "needs: [inspect", 9)
    hover("a param used in an expression", "params.limit", 8)
    hover("a playbook run by a hook", "run: respond", 6)
    hover("an input used in a template", "inputs.why", 8)

    def locations(method: str, label: str, needle: str, offset: int = 1, nth: int = 0, **extra) -> None:
        line, col = position_of(text, needle, nth, offset)
        params = {**client.at("pack.yaml", line, col), **extra}
        result = client.request(method, params) or []
        out[f"{method.split('/')[1]}: {label}"] = sorted(
            (
                Path(r["uri"]).name if r["uri"].startswith("file:") else r["uri"],
                r["range"]["start"]["line"],
                r["range"]["start"]["character"],
                r["range"]["end"]["character"],
            )
            for r in result
        )

    for method, extra in (
        ("textDocument/definition", {}),
        ("textDocument/references", {"context": {"includeDeclaration": True}}),
    ):
        locations(method, "step inspect (from steps.inspect)", "steps.inspect", 7, **extra)
        locations(method, "step scale (from needs)", "needs: [scale", 9, **extra)
        locations(method, "playbook page (from playbook.call)", "playbook: page", 11, **extra)
        locations(method, "playbook respond (from a hook)", "run: respond", 6, **extra)
        locations(method, "trigger latency (from a hook)", "trigger: latency", 10, **extra)
        locations(method, "param kernel_url (from an expression)", "params.kernel_url", 8, **extra)
        locations(method, "input why (from an expression)", "inputs.why", 8, **extra)
    return out


def test_golden_session(client: Client, workspace: Path, update_golden: bool):
    client.open("pack.test.yaml")
    got = _session(client, workspace)
    got = json.loads(json.dumps(got))
    if update_golden:
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    assert got == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_completion_of_steps_offers_ancestors_only():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["completion: steps. in scale (ancestors only)"] == ["inspect"]
    assert golden["completion: steps. in escalate (ancestors only)"] == ["inspect", "scale"]
    assert golden["completion: needs: step ids"] == ["inspect", "scale"]
    assert golden["completion: params."] == ["kernel_url", "limit"]
    assert golden["completion: inputs. of page"] == ["why"]


# ---------------------------------------------------------------- rename


def test_rename_a_step_id_across_needs_expressions_compensations_and_tests(workspace: Path, tmp_path: Path):
    for name in ("pack.yaml", "pack.test.yaml", "org-policies.yaml"):
        shutil.copy(workspace / name, tmp_path / name)
    # another pack with the same playbook and step names, and its test: names are pack-local
    (tmp_path / "other").mkdir()
    shutil.copy(workspace / "pack.yaml", tmp_path / "other" / "pack.yaml")
    shutil.copy(workspace / "pack.test.yaml", tmp_path / "other" / "pack.test.yaml")
    c = Client(tmp_path)
    try:
        text = (tmp_path / "pack.yaml").read_text()
        c.open("pack.yaml")
        c.diagnostics("pack.yaml")
        line, col = position_of(text, "- id: inspect", 0, 8)
        prepared = c.request("textDocument/prepareRename", c.at("pack.yaml", line, col))
        assert prepared == {"start": {"line": line, "character": 12}, "end": {"line": line, "character": 19}}
        edit = c.request("textDocument/rename", {**c.at("pack.yaml", line, col), "newName": "look"})
        with pytest.raises(LspError, match="already has a step `scale`"):
            c.request("textDocument/rename", {**c.at("pack.yaml", line, col), "newName": "scale"})
        with pytest.raises(LspError, match="not a step id"):
            c.request("textDocument/rename", {**c.at("pack.yaml", line, col), "newName": "a b"})
        line, col = position_of(text, "run: respond", 0, 6)
        assert c.request("textDocument/prepareRename", c.at("pack.yaml", line, col)) is None
    finally:
        c.close()
    changes = {Path(uri).name: edits for uri, edits in edit["changes"].items()}
    assert sorted(changes) == ["pack.test.yaml", "pack.yaml"]
    assert all("/other/" not in uri for uri in edit["changes"])
    for name, edits in changes.items():
        path = tmp_path / name
        path.write_text(_apply(path.read_text(), edits))
    renamed = (tmp_path / "pack.yaml").read_text()
    assert "inspect" not in renamed
    assert renamed == (FIXTURES / "pack.yaml").read_text().replace("inspect", "look")
    assert (tmp_path / "pack.test.yaml").read_text() == (FIXTURES / "pack.test.yaml").read_text().replace(
        "inspect", "look"
    )
    # the renamed pack still lints clean and its test still passes
    for args in (["lint", "pack.yaml"], ["test", "pack.test.yaml"]):
        result = subprocess.run(
            [sys.executable, "-m", "opsdsl", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _apply(text: str, edits: list[dict]) -> str:
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)

    def index(p: dict) -> int:
        return offsets[p["line"]] + p["character"]

    for edit in sorted(edits, key=lambda e: index(e["range"]["start"]), reverse=True):
        text = text[: index(edit["range"]["start"])] + edit["newText"] + text[index(edit["range"]["end"]) :]
    return text


# ---------------------------------------------------------------- code actions and formatting


def _fixes(c: Client, name: str, text: str) -> tuple[list[dict], list[dict]]:
    c.change(name, text)
    diagnostics = c.diagnostics(name)
    actions = []
    for d in diagnostics:
        actions += c.request(
            "textDocument/codeAction",
            {"textDocument": {"uri": c.uri(name)}, "range": d["range"], "context": {"diagnostics": [d]}},
        )
    return diagnostics, actions


@pytest.mark.parametrize(
    ("case", "title", "fixed_code"),
    [
        ("typo in a step key", "Change to `timeout`", "OPS011"),
        ("unknown trigger", "Change to `latency`", "OPS032"),
        ("missing cooldown", "Add `cooldown: 10m`", "OPS042"),
        ("network step without timeout", "Add `timeout: 10s`", "OPS041"),
        ("missing cooldown", "Ignore OPS042 on this line", "OPS042"),
    ],
)
def test_quick_fixes_make_the_finding_go_away(case: str, title: str, fixed_code: str, client: Client):
    old, new = BROKEN[case]
    text = (FIXTURES / "pack.yaml").read_text().replace(old, new, 1)
    diagnostics, actions = _fixes(client, "pack.yaml", text)
    assert fixed_code in [d["code"] for d in diagnostics]
    (action,) = [a for a in actions if a["title"] == title]
    assert action["kind"] == "quickfix"
    fixed = _apply(text, action["edit"]["changes"][client.uri("pack.yaml")])
    client.change("pack.yaml", fixed)
    assert fixed_code not in [d["code"] for d in client.diagnostics("pack.yaml")]
    if not title.startswith("Ignore"):
        client.change("pack.yaml", fixed)
        assert client.diagnostics("pack.yaml") == []
    client.change("pack.yaml", (FIXTURES / "pack.yaml").read_text())
    client.diagnostics("pack.yaml")


def test_every_finding_can_be_suppressed_on_its_line(client: Client):
    text = (FIXTURES / "pack.yaml").read_text().replace("trigger: latency", "trigger: latncy")
    diagnostics, actions = _fixes(client, "pack.yaml", text)
    suppress = [a for a in actions if a["title"].startswith("Ignore")]
    assert len(suppress) == len(diagnostics) > 0
    for action in suppress:
        text = _apply(text, action["edit"]["changes"][client.uri("pack.yaml")])
    client.change("pack.yaml", text)
    assert client.diagnostics("pack.yaml") == []
    assert "# opsdsl: ignore[" in text
    client.change("pack.yaml", (FIXTURES / "pack.yaml").read_text())
    client.diagnostics("pack.yaml")


def test_formatting_an_ops_file_is_opsdsl_fmt(workspace: Path, tmp_path: Path):
    source = (ROOT / "examples" / "ops" / "sev4.ops").read_text()
    messy = "\n".join("   " + line.strip() if i % 3 == 0 else line for i, line in enumerate(source.splitlines())) + "\n"
    (tmp_path / "messy.ops").write_text(messy)
    expected = subprocess.run(
        [sys.executable, "-m", "opsdsl", "fmt", "messy.ops"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    ).stdout
    assert expected and expected != messy
    c = Client(tmp_path)
    try:
        c.open("messy.ops")
        assert c.diagnostics("messy.ops") == []
        edits = c.request(
            "textDocument/formatting",
            {"textDocument": {"uri": c.uri("messy.ops")}, "options": {"tabSize": 2, "insertSpaces": True}},
        )
        assert _apply(messy, edits) == expected
        c.change("messy.ops", expected)
        c.diagnostics("messy.ops")
        assert (
            c.request(
                "textDocument/formatting",
                {"textDocument": {"uri": c.uri("messy.ops")}, "options": {"tabSize": 2, "insertSpaces": True}},
            )
            == []
        )
        c.change("messy.ops", "pack broken {")
        assert c.diagnostics("messy.ops")[0]["code"].startswith("OPS")
        assert (
            c.request(
                "textDocument/formatting",
                {"textDocument": {"uri": c.uri("messy.ops")}, "options": {"tabSize": 2, "insertSpaces": True}},
            )
            is None
        )
    finally:
        c.close()


def test_hover_on_a_function_a_rule_code_and_a_pack_test_key(client: Client):
    text = (
        (FIXTURES / "pack.yaml")
        .read_text()
        .replace(
            "        when: steps.inspect.outputs.json.p95_ms > params.limit\n",
            "        when: size(steps.inspect.outputs) > 0 && steps.inspect.status.matches('^ok')  # opsdsl: ignore[OPS048]\n",
        )
    )
    client.change("pack.yaml", text)
    client.diagnostics("pack.yaml")
    for needle, offset, expected in (
        ("size(", 1, "`size(list|map|string) → int`"),
        (".matches(", 3, "`string.matches(string) → bool`"),
        ("OPS048", 2, "**OPS048 constant-condition** (warning)"),
    ):
        line, col = position_of(text, needle, 0, offset)
        result = client.request("textDocument/hover", client.at("pack.yaml", line, col))
        assert expected in result["contents"]["value"], result
    client.change("pack.yaml", (FIXTURES / "pack.yaml").read_text())
    client.diagnostics("pack.yaml")

    test = (FIXTURES / "pack.test.yaml").read_text().replace("    expect:\n", "    expect:\n      \n")
    client.open("hover.test.yaml", test)
    line, col = position_of(test, "mocks:", 0, 1)
    result = client.request("textDocument/hover", client.at("hover.test.yaml", line, col))
    assert result and "mock" in result["contents"]["value"].lower(), result
    line, col = position_of(test, "    expect:\n", 0, len("    expect:\n      "))
    labels = _labels(client.request("textDocument/completion", client.at("hover.test.yaml", line, col)))
    assert {"skipped", "decisions", "outputs", "compensated"} <= set(labels)
    assert "started" not in labels  # already there


def test_editing_a_policy_pack_rechecks_the_open_packs(tmp_path: Path):
    """The organisation's policy pack requires an approval for high-risk steps outside
    SEV-1, so a risky step needs no guard of its own; weaken the policy in the editor
    (unsaved) and the open pack gets OPS040 at once, as lint would with that policy pack."""
    pack = (
        (FIXTURES / "pack.yaml")
        .read_text()
        .replace("        needs: [scale]\n", "        needs: [scale]\n        risk: high\n")
    )
    (tmp_path / "pack.yaml").write_text(pack)
    policies = (ROOT / "packs" / "org-policies.yaml").read_text()
    shutil.copy(ROOT / "packs" / "org-policies.yaml", tmp_path / "org-policies.yaml")
    weakened = policies.replace(
        'when: step.risk == "high" && run.severity != "SEV-1"',
        'when: step.risk == "high" && run.severity == "SEV-1"',
        1,
    )
    assert weakened != policies
    c = Client(tmp_path)
    try:
        c.open("pack.yaml")
        assert "OPS040" not in [d["code"] for d in c.diagnostics("pack.yaml")]
        c.open("org-policies.yaml")
        c.diagnostics("org-policies.yaml")
        c.change("org-policies.yaml", weakened)
        assert "OPS040" in [d["code"] for d in c.diagnostics("pack.yaml")]
        c.change("org-policies.yaml", policies)
        assert "OPS040" not in [d["code"] for d in c.diagnostics("pack.yaml")]
    finally:
        c.close()


def test_half_typed_ops_files_get_lints_syntax_errors_and_no_crash(tmp_path: Path):
    text = (ROOT / "examples" / "ops" / "sev4.ops").read_text()
    c = Client(tmp_path)
    try:
        c.open("typing.ops", "")
        c.diagnostics("typing.ops")
        for cut in range(0, len(text), max(1, len(text) // 40)):
            version = text[:cut]
            c.change("typing.ops", version)
            line = version.count("\n")
            col = len(version) - (version.rfind("\n") + 1)
            c.request("textDocument/completion", c.at("typing.ops", line, col))
            c.request("textDocument/hover", c.at("typing.ops", line, col))
            c.request(
                "textDocument/formatting",
                {"textDocument": {"uri": c.uri("typing.ops")}, "options": {"tabSize": 2, "insertSpaces": True}},
            )
        assert all(d["code"].startswith("OPS") for d in c.diagnostics("typing.ops"))
        c.change("typing.ops", text)
        assert c.diagnostics("typing.ops") == []
    finally:
        assert c.close() == 0


def test_quick_fixes_in_an_ops_file_write_ops_syntax(tmp_path: Path):
    original = (ROOT / "examples" / "ops" / "sev4.ops").read_text()
    text = original.replace("    cooldown 6h\n", "", 1).replace("      timeout 10s\n", "", 1)
    c = Client(tmp_path)
    try:
        c.open("sev4.ops", text)
        diagnostics, actions = _fixes(c, "sev4.ops", text)
        assert sorted(d["code"] for d in diagnostics) == ["OPS041", "OPS042"]
        adds = [a for a in actions if a["title"] in ("Add `cooldown 10m`", "Add `timeout 10s`")]
        assert len(adds) == 2
        edits = [e for a in adds for e in a["edit"]["changes"][c.uri("sev4.ops")]]
        fixed = _apply(text, edits)
        c.change("sev4.ops", fixed)
        assert c.diagnostics("sev4.ops") == []
        assert "    cooldown 10m\n" in fixed
        assert fixed.count("timeout 10s") == original.count("timeout 10s")
    finally:
        c.close()


def test_pack_tests_are_checked_by_opsdsl_test_when_opened_and_saved(tmp_path: Path):
    for name in ("pack.yaml", "pack.test.yaml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    test = (FIXTURES / "pack.test.yaml").read_text()
    c = Client(tmp_path)
    try:
        c.open("pack.test.yaml")
        assert c.diagnostics("pack.test.yaml", timeout=120) == []
        # a mock for a step that does not exist, saved: the rehearsal's own finding
        broken = test.replace("      inspect: {outputs", "      inspct: {outputs")
        c.change("pack.test.yaml", broken)
        (tmp_path / "pack.test.yaml").write_text(broken)
        c.notify("textDocument/didSave", {"textDocument": {"uri": c.uri("pack.test.yaml")}})
        (d,) = c.diagnostics("pack.test.yaml", timeout=120)
        assert d["code"] == "OPS062" and "did you mean `inspect`" in d["message"]
        line, col = position_of(broken, "inspct")
        assert d["range"]["start"] == {"line": line, "character": col}
        # an expectation that fails: an error at the expectation's line, with the diff
        failing = test.replace("status: succeeded", "status: failed")
        c.change("pack.test.yaml", failing)
        (tmp_path / "pack.test.yaml").write_text(failing)
        c.notify("textDocument/didSave", {"textDocument": {"uri": c.uri("pack.test.yaml")}})
        (d,) = c.diagnostics("pack.test.yaml", timeout=120)
        assert d["source"] == "opsdsl test" and d["range"]["start"]["line"] == position_of(failing, "status: failed")[0]
        assert "expect.status: the run succeeded, not failed" in d["message"] and "+succeeded" in d["message"]
    finally:
        c.close()
