"""`opsdsl compile` end to end: signed plans, byte-identical rebuilds, incremental builds, drift."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opsdsl.build.signing import parse_envelope, verify_envelope

ROOT = Path(__file__).resolve().parents[2]
PLANS = ["sqlx-sev1", "sqlx-sev2", "sqlx-sev3", "sqlx-sev4"]


def opsdsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsdsl", *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if "→" in line:
            status, rest = line.split(" sqlx-", 1) if " sqlx-" in line else (line, "")
            out["sqlx-" + rest.split(" ", 1)[0]] = status.strip()
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "packs", tmp_path / "packs")
    assert opsdsl("keygen", "--out", "keys/ci.key", cwd=tmp_path).returncode == 0
    assert opsdsl("keygen", "--out", "keys/sre.key", cwd=tmp_path).returncode == 0
    return tmp_path


def compile_tree(tree: Path, *extra: str) -> subprocess.CompletedProcess:
    result = opsdsl("compile", "packs/", "-o", "build", "--key", "keys/ci.key", *extra, cwd=tree)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def envelope(tree: Path, name: str) -> dict:
    return parse_envelope((tree / "build" / f"{name}.plan.dsse.json").read_bytes())


def test_compile_writes_signed_plans_and_a_manifest(tree: Path):
    result = compile_tree(tree)
    assert statuses(result.stdout) == dict.fromkeys(PLANS, "compiled")
    assert "sqlx-org-policies 4.0.0" in result.stdout and "policy pack" in result.stdout
    from opsdsl.build.signing import keyid, load_public_key

    public = load_public_key(tree / "keys" / "ci.key.pub")
    for name in PLANS:
        verified = verify_envelope(envelope(tree, name), {keyid(public): public}, 1)
        plan = json.loads(verified.payload)
        assert plan["kind"] == "Plan" and plan["pack"]["name"] == name
        assert plan["policyPacks"][0]["name"] == "sqlx-org-policies"
    manifest = json.loads((tree / "build" / "manifest.json").read_text())
    entry = manifest["packs"]["sqlx-sev2"]
    assert entry["source"] == "packs/sev2.yaml" and entry["plan"] == "sqlx-sev2.plan.dsse.json"
    assert entry["spans"]["query-latency-regression"]["inspect_latency"].startswith("packs/sev2.yaml:")
    assert opsdsl("verify", "build/sqlx-sev1.plan.dsse.json", "--key", "keys/ci.key.pub", cwd=tree).returncode == 0


def test_rebuilds_are_byte_identical_in_other_directories_and_orders(tree: Path, tmp_path_factory):
    compile_tree(tree)
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(tree / "keys", other / "keys")
    (other / "in" / "deep").mkdir(parents=True)
    for i, path in enumerate(sorted((tree / "packs").glob("*.yaml"), reverse=True)):
        shutil.copy(path, other / "in" / "deep" / f"{i}-{path.name}")  # another order, other names
    result = opsdsl("compile", "in", "-o", "out", "--key", "keys/ci.key", "-j", "1", cwd=other)
    assert result.returncode == 0, result.stderr
    for name in PLANS:
        assert (tree / "build" / f"{name}.plan.dsse.json").read_bytes() == (
            other / "out" / f"{name}.plan.dsse.json"
        ).read_bytes()


def test_incremental_builds(tree: Path):
    compile_tree(tree)
    second = compile_tree(tree)
    assert statuses(second.stdout) == dict.fromkeys(PLANS, "unchanged, reused")

    sev3 = tree / "packs" / "sev3.yaml"
    sev3.write_text(sev3.read_text().replace("cooldown: 30m", "cooldown: 31m", 1))
    assert "cooldown: 31m" in sev3.read_text()
    third = compile_tree(tree)
    assert statuses(third.stdout) == {**dict.fromkeys(PLANS, "unchanged, reused"), "sqlx-sev3": "compiled"}

    before = (tree / "build" / "sqlx-sev4.plan.dsse.json").read_bytes()
    sev4 = tree / "packs" / "sev4.yaml"
    sev4.write_text("# reformatted, same meaning\n" + sev4.read_text())
    fourth = compile_tree(tree)
    assert statuses(fourth.stdout)["sqlx-sev4"] == "unchanged, kept"
    assert (tree / "build" / "sqlx-sev4.plan.dsse.json").read_bytes() == before

    org = tree / "packs" / "org-policies.yaml"
    org.write_text(org.read_text().replace("message: high-risk", "message: revised, high-risk", 1))
    fifth = compile_tree(tree)
    assert statuses(fifth.stdout) == dict.fromkeys(PLANS, "compiled")  # every scope changed


def test_adding_a_key_adds_a_signature_without_recompiling(tree: Path):
    compile_tree(tree)
    result = compile_tree(tree, "--key", "keys/sre.key")
    assert set(statuses(result.stdout).values()) == {"compiled"}
    assert len(envelope(tree, "sqlx-sev2")["signatures"]) == 2
    payload = base64.b64decode(envelope(tree, "sqlx-sev2")["payload"])
    assert json.loads(payload)["pack"]["name"] == "sqlx-sev2"


def test_broken_pack_fails_the_build_with_diagnostics(tree: Path):
    sev2 = tree / "packs" / "sev2.yaml"
    sev2.write_text(sev2.read_text().replace("action: http.request", "action: http.requst", 1))
    result = opsdsl("compile", "packs/", "-o", "build", "--key", "keys/ci.key", cwd=tree)
    assert result.returncode == 1
    assert "error[OPS036] unknown action `http.requst`" in result.stderr
    assert not (tree / "build" / "sqlx-sev2.plan.dsse.json").exists()


def test_unsigned_builds_warn(tree: Path):
    result = opsdsl("compile", "packs/", "-o", "build", cwd=tree)
    assert result.returncode == 0
    assert "plans are unsigned" in result.stderr
    assert envelope(tree, "sqlx-sev1")["signatures"] == []


def test_emit_plan_prints_json(tree: Path):
    result = opsdsl("compile", "packs/sev4.yaml", "--emit", "plan", cwd=tree)
    assert result.returncode == 0
    assert json.loads(result.stdout)["pack"]["name"] == "sqlx-sev4"


def test_drift_finds_stale_plans(tree: Path):
    compile_tree(tree)
    assert opsdsl("lock", "packs/", cwd=tree).returncode == 0
    assert opsdsl("drift", "packs/", cwd=tree).returncode == 0
    sev1 = tree / "packs" / "sev1.yaml"
    sev1.write_text(
        sev1.read_text().replace("version: 4.0.0", "version: 4.0.1", 1).replace("cooldown: 15m", "cooldown: 12m", 1)
    )
    result = opsdsl("drift", "packs/", cwd=tree)
    assert result.returncode == 1
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["changed", "stale-plan"]


def test_a_broken_policy_pack_stops_the_whole_build(tree: Path):
    org = tree / "packs" / "org-policies.yaml"
    org.write_text(org.read_text().replace("effect: require_approval", "effect: requires_approval", 1))
    result = opsdsl("compile", "packs/", "-o", "build", "--key", "keys/ci.key", cwd=tree)
    assert result.returncode == 1
    assert "build failed: no plan was written" in result.stderr
    assert not (tree / "build").exists() or not list((tree / "build").glob("*.plan.dsse.json"))


def test_the_model_decides_what_is_a_policy_pack(tree: Path):
    org = tree / "packs" / "org-policies.yaml"
    org.write_text(org.read_text().replace("kind: PolicyPack", "kind:\n  PolicyPack", 1))  # the quick guess misses it
    sev4 = tree / "packs" / "sev4.yaml"
    text = sev4.read_text()
    assert "  description: SEV-4 responses" in text
    sev4.write_text(
        text.replace(
            "  description: SEV-4 responses", '  description: "SEV-4\n\nkind: PolicyPack\n  responses', 1
        ).replace("dashboards.\n", 'dashboards."\n', 1)
    )
    assert "\nkind: PolicyPack" in sev4.read_text()
    compile_tree(tree)
    for name in PLANS:
        plan = json.loads(base64.b64decode(envelope(tree, name)["payload"]))
        assert [p["name"] for p in plan["policyPacks"]] == ["sqlx-org-policies"], name


def test_duplicate_pack_names_write_nothing(tree: Path):
    shutil.copy(tree / "packs" / "sev2.yaml", tree / "packs" / "sev2-copy.yaml")
    result = opsdsl("compile", "packs/", "-o", "build", "--key", "keys/ci.key", cwd=tree)
    assert result.returncode == 1
    assert "pack name `sqlx-sev2` is already used by packs/sev2-copy.yaml" in result.stderr
    assert not list((tree / "build").glob("*.plan.dsse.json")) if (tree / "build").exists() else True


def test_a_damaged_signature_is_not_reused(tree: Path):
    compile_tree(tree)
    path = tree / "build" / "sqlx-sev2.plan.dsse.json"
    document = json.loads(path.read_text())
    sig = document["signatures"][0]["sig"]
    document["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    result = compile_tree(tree)
    assert statuses(result.stdout)["sqlx-sev2"] == "compiled"
    assert opsdsl("verify", "build/sqlx-sev2.plan.dsse.json", "--key", "keys/ci.key.pub", cwd=tree).returncode == 0


def test_a_second_persons_signature_survives_a_rebuild(tree: Path):
    compile_tree(tree)
    assert opsdsl("sign", "build/sqlx-sev1.plan.dsse.json", "--key", "keys/sre.key", cwd=tree).returncode == 0
    compile_tree(tree, "--rebuild")
    assert len(envelope(tree, "sqlx-sev1")["signatures"]) == 2


def test_plans_of_removed_packs_are_pruned(tree: Path):
    compile_tree(tree)
    (tree / "packs" / "sev4.yaml").unlink()
    compile_tree(tree)
    assert not (tree / "build" / "sqlx-sev4.plan.dsse.json").exists()
    assert "sqlx-sev4" not in json.loads((tree / "build" / "manifest.json").read_text())["packs"]


def test_parallel_and_serial_builds_agree(tree: Path):
    for i in range(16):
        text = (tree / "packs" / "sev4.yaml").read_text().replace("name: sqlx-sev4", f"name: sqlx-extra-{i:02}", 1)
        (tree / "packs" / f"extra-{i:02}.yaml").write_text(text)
    serial = opsdsl("compile", "packs/", "-o", "serial", "--key", "keys/ci.key", "-j", "1", cwd=tree)
    parallel = opsdsl("compile", "packs/", "-o", "parallel", "--key", "keys/ci.key", "-j", "2", cwd=tree)
    assert serial.returncode == parallel.returncode == 0, parallel.stderr
    files = sorted(p.name for p in (tree / "serial").glob("*.plan.dsse.json"))
    assert len(files) == 20
    for name in files:
        assert (tree / "serial" / name).read_bytes() == (tree / "parallel" / name).read_bytes()


def test_a_failed_parallel_build_leaves_no_staged_file_and_keeps_the_old_plans(tree: Path):
    """The workers sign and stage each plan in a temporary file as they go; a build that
    fails afterwards must remove every one and leave the plans already there as they were."""
    compile_tree(tree)
    before = {p.name: p.read_bytes() for p in (tree / "build").iterdir()}
    for i in range(16):
        text = (tree / "packs" / "sev4.yaml").read_text().replace("name: sqlx-sev4", f"name: sqlx-extra-{i:02}", 1)
        (tree / "packs" / f"extra-{i:02}.yaml").write_text(text)
    sev3 = tree / "packs" / "sev3.yaml"
    sev3.write_text(sev3.read_text().replace("name: sqlx-sev3", "name: sqlx-sev2", 1))  # a duplicate name
    result = opsdsl("compile", "packs/", "-o", "build", "--key", "keys/ci.key", "-j", "2", "--rebuild", cwd=tree)
    assert result.returncode == 1 and "already used by" in result.stderr
    assert {p.name: p.read_bytes() for p in (tree / "build").iterdir()} == before
    fresh = opsdsl("compile", "packs/", "-o", "fresh", "--key", "keys/ci.key", "-j", "2", cwd=tree)
    assert fresh.returncode == 1 and not (tree / "fresh").exists()


def test_the_manifest_is_what_json_dumps_gives(tree: Path):
    """Step positions are rendered by the workers and spliced into the manifest: the file
    must still be exactly `json.dumps(manifest, indent=2, sort_keys=True)`."""
    for i in range(16):
        text = (tree / "packs" / "sev4.yaml").read_text().replace("name: sqlx-sev4", f"name: sqlx-extra-{i:02}", 1)
        (tree / "packs" / f"extra-{i:02}.yaml").write_text(text)
    compile_tree(tree, "-j", "2")
    data = (tree / "build" / "manifest.json").read_text()
    manifest = json.loads(data)
    assert data == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert len(manifest["packs"]) == 20 and all(e["spans"] for e in manifest["packs"].values())
    assert not [p for p in (tree / "build").iterdir() if p.name.endswith(".tmp")]
    compile_tree(tree)  # reused entries (plain dicts) and a fresh one side by side
    (tree / "packs" / "extra-00.yaml").write_text((tree / "packs" / "extra-00.yaml").read_text() + "\n# changed\n")
    compile_tree(tree)
    data = (tree / "build" / "manifest.json").read_text()
    assert data == json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n"
