"""The evidence pack beside the record: what ran (the signed plan and its packs) and the ledger excerpt.

Seed section 10 asks for "telemetry snapshots, policy pack, ledger diff". The snapshots
are `evidence/` (written by evidence.collect steps); this module adds

- `plan/plan.dsse.json`: the signed plan exactly as the run verified it (DSSE envelope);
  its payload's sha256 is the record's `plan_digest`.
- `plan/packs/NAME.json` and `plan/policy-packs/NAME.json`: each pack and policy pack in
  the plan, with its version and model digest, as the signed plan holds it (a plan holds
  the checked model, not the source file's text: see docs/incidents.md).
- `ledger/excerpt.json`: the ledger from the run's first entry to the checkpoint after
  its last, each entry with its chain links, the link before the first, and that signed
  checkpoint, so a third party can recompute every hash and check the checkpoint.

`check_excerpt` and `check_plan_files` are what `incident verify` runs over them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsdsl.audit.incident._common import EXCERPT_FILE, _canonical
from opsdsl.audit.incident.record import HASHES, entries_digest, entry_hashes_digest
from opsdsl.audit.ledger import ts_text
from opsdsl.canonical import canonical_json, indented_json

PLAN_DIR = "plan"
PLAN_FILE = "plan/plan.dsse.json"
EXCERPT_FORMAT = "opsdsl.ledger-excerpt/v1"
MAX_EXCERPT_ENTRIES = 20_000  # entries of other runs interleaved under `serve` count too
MAX_EXCERPT_BYTES = 32 * 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_SAFE_INT = 2**53 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PLAIN = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff]*')


# --- the plan and its packs ----------------------------------------------------------------


def plan_files(envelope: bytes) -> dict[str, bytes]:
    """`{relative path: bytes}` of the plan envelope and one file per pack and policy pack in it."""
    return dict(_plan_files(bytes(envelope)))


@functools.lru_cache(maxsize=4)
def _plan_files(envelope: bytes) -> tuple[tuple[str, bytes], ...]:
    # A pure function of the envelope's bytes, and a server runs the same few plans again and
    # again: each of their incident folders gets the same files without rendering them anew.
    payload = _payload(envelope)
    files = {PLAN_FILE: envelope}
    pack = payload.get("pack") or {}
    policies = payload.get("policies") or []
    files[f"{PLAN_DIR}/packs/{_file_name(pack.get('name'), pack.get('digest'))}.json"] = _json_bytes(
        {
            "kind": "Pack",
            "name": pack.get("name"),
            "version": pack.get("version"),
            "owner": pack.get("owner"),
            "digest": pack.get("digest"),
            "params": payload.get("params"),
            "triggers": payload.get("triggers"),
            "hooks": payload.get("hooks"),
            "policies": [p for p in policies if isinstance(p, dict) and p.get("origin") == pack.get("name")],
            "playbooks": payload.get("playbooks"),
        }
    )
    for scope in payload.get("policyPacks") or []:
        name = scope.get("name")
        files[f"{PLAN_DIR}/policy-packs/{_file_name(name, scope.get('digest'))}.json"] = _json_bytes(
            {
                "kind": "PolicyPack",
                "name": name,
                "version": scope.get("version"),
                "digest": scope.get("digest"),
                "policies": [p for p in policies if isinstance(p, dict) and p.get("origin") == name],
            }
        )
    return tuple(files.items())


def check_plan_files(files: Mapping[str, bytes | None], record: Mapping[str, Any]) -> list[str]:
    """Problems with the plan files of a folder: the envelope is the record's plan, each pack file is
    what that plan holds (no more, no fewer). `files` maps paths under plan/ to their bytes."""
    envelope = files.get(PLAN_FILE)
    if envelope is None:
        return [f"{PLAN_FILE}: missing (the folder has other plan files)"] if files else []
    try:
        expected = plan_files(envelope)
    except ValueError as exc:
        return [f"{PLAN_FILE}: not a readable plan envelope ({exc})"]
    from opsdsl.canonical import sha256_digest

    problems = []
    digest = sha256_digest(_payload_bytes(envelope))
    if digest != record.get("plan_digest"):
        problems.append(f"{PLAN_FILE}: holds plan {digest}, the record ran {record.get('plan_digest')}")
    for path in sorted(set(files) | set(expected)):
        if path not in files:
            problems.append(f"{path}: missing; the plan holds this pack")
        elif path not in expected:
            problems.append(f"{path}: the plan holds no such pack")
        elif files[path] != expected[path]:
            problems.append(f"{path}: differs from the pack the signed plan holds")
    return problems


def _payload_bytes(envelope: bytes) -> bytes:
    from opsdsl.build.signing import decode_base64, parse_envelope

    try:
        return decode_base64(parse_envelope(envelope)["payload"])
    except Exception as exc:  # parse_envelope raises its own errors; all mean "not an envelope"
        raise ValueError(str(exc) or type(exc).__name__) from None


def _payload(envelope: bytes) -> dict:
    try:
        payload = json.loads(_payload_bytes(envelope))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"its payload is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ValueError("its payload is not a plan")
    return payload


def _file_name(name: object, digest: object) -> str:
    """The pack's name when it is a safe file name, else its digest's hex."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name):
        return name
    return str(digest or "unnamed").removeprefix("sha256:")[:64] or "unnamed"


def _json_bytes(value: Any) -> bytes:
    return (indented_json(value) + "\n").encode("utf-8")


# --- the ledger excerpt ----------------------------------------------------------------------


def ledger_excerpt(ledger: Any, run_entries: list[dict], checkpoint: Mapping[str, Any] | None) -> dict:
    """The excerpt of `ledger` (an opsdsl.audit.ledger.Ledger) for one run, parsed: `ledger_excerpt_bytes`'s JSON."""
    return json.loads(ledger_excerpt_bytes(ledger, run_entries, checkpoint))


def ledger_excerpt_bytes(ledger: Any, run_entries: list[dict], checkpoint: Mapping[str, Any] | None) -> bytes:
    """ledger/excerpt.json of one run: every entry from the run's first to the checkpoint's seq, in order.

    Entries of other runs that fall in between are included too, since a chain can only be
    recomputed entry by entry. Past MAX_EXCERPT_ENTRIES or MAX_EXCERPT_BYTES the excerpt
    keeps the run's own entries and says `complete: false` (checkable against the record's
    digest, not against the checkpoint). Each entry is one line built from the ledger's row
    as stored (`Ledger.rows`): its data is the canonical JSON text that was hashed, copied
    as it is, never parsed and written again.
    """
    first, last = run_entries[0]["seq"], run_entries[-1]["seq"]
    anchored = checkpoint is not None and int(checkpoint["seq"]) >= last
    until = int(checkpoint["seq"]) if anchored else last
    lines: list[str] = []
    before: str | None = None  # the link before the first entry
    size, complete = 0, True
    for row in _rows(ledger, first - 1, until):
        line = entry_line(row)
        size += len(line) if line.isascii() else len(line.encode("utf-8"))
        if len(lines) >= MAX_EXCERPT_ENTRIES or size > MAX_EXCERPT_BYTES:
            complete = False
            break
        before = before or row[5].hex()
        lines.append(line)
    if not complete:
        own = list(_rows(ledger, first - 1, last, run_entries[0]["run"]))
        lines, before = [entry_line(row) for row in own], own[0][5].hex() if own else None
    return compose_excerpt(run_entries[0]["run"], complete, first - 1, before, lines, checkpoint if anchored else None)


def _rows(ledger: Any, after: int, until: int, run: str | None = None) -> Iterable[tuple]:
    """The ledger's stored rows (seq, ts, run, kind, data text, prev, hash); parsed entries
    written back to canonical text for a ledger-like object without `rows`."""
    if hasattr(ledger, "rows"):
        return ledger.rows(after=after, until=until, run=run)
    return (
        (e.seq, e.ts, e.run, e.kind, _canonical(e.data).decode("utf-8"), e.prev, e.hash)
        for e in ledger.entries(after=after)
        if e.seq <= until and (run is None or e.run == run)
    )


def entry_line(row: Sequence[Any]) -> str:
    """One excerpt entry from a stored row (seq, ts, run, kind, data text, prev, hash): the entry's
    RFC 8785 canonical JSON, with `data` the stored text and `ts` written as it was hashed."""
    seq, ts, run, kind, data, prev, digest = row
    try:
        ts_json = ts_text(ts)
    except ValueError:  # not what the ledger writes; checking the excerpt will say so
        ts_json = json.dumps(ts)
    run_json = "null" if run is None else _json_string(run)
    return (
        f'{{"data":{data},"hash":"{digest.hex()}","kind":{_json_string(kind)},"prev":"{prev.hex()}",'
        f'"run":{run_json},"seq":{seq},"ts":{ts_json}}}'
    )


def _json_string(text: str) -> str:
    """`text` as a JSON string the way RFC 8785 writes it (json.dumps escapes exactly the same)."""
    if _PLAIN.fullmatch(text):  # run ids and kinds: nothing to escape
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def compose_excerpt(
    run: str,
    complete: bool,
    before_seq: int,
    before_hash: str | None,
    lines: Sequence[str],
    checkpoint: Mapping[str, Any] | None,
) -> bytes:
    """The excerpt document around its entry lines: keys sorted, two-space indent, one entry a line."""
    before = {"hash": before_hash, "seq": before_seq}
    parts = [
        "{",
        f'  "before": {json.dumps(before, sort_keys=True, ensure_ascii=False)},',
        f'  "checkpoint": {json.dumps(dict(checkpoint) if checkpoint else None, sort_keys=True, ensure_ascii=False)},',
        f'  "complete": {"true" if complete else "false"},',
        '  "entries": [' if lines else '  "entries": [],',
    ]
    if lines:
        parts.append("    " + ",\n    ".join(lines))
        parts.append("  ],")
    parts += [f'  "format": "{EXCERPT_FORMAT}",', f'  "run": {json.dumps(run, ensure_ascii=False)}', "}", ""]
    return "\n".join(parts).encode("utf-8")


def _own_digest(own: list[dict], hashes: list[str | None], digest_of: object) -> str | None:
    """The run's entries digested as the record says it digested them (None: cannot be).

    `entries_digest_of: "hashes"`: over the hashes recomputed from the entries' content, so
    an entry changed (whether or not its stored hash was changed with it) changes the digest.
    Absent: over the entries' content (records before December 2026, rehearsals).
    """
    try:
        if digest_of == HASHES:
            if any(value is None for value in hashes):
                return None
            return entry_hashes_digest(bytes.fromhex(value) for value in hashes if value is not None)
        if digest_of is None:
            return entries_digest(own)
    except (ValueError, TypeError):
        return None
    return None  # a definition this opsdsl does not know


def check_excerpt(
    excerpt: object, record: Mapping[str, Any], trusted: Mapping[str, Ed25519PublicKey]
) -> tuple[list[str], str]:
    """(problems, one-line summary) of a ledger excerpt checked against the record and the trusted keys.

    In order: 1. the shape; 2. every entry's hash recomputed from its content and its
    link to the one before; 3. the run's entries are the record's (seq range, count,
    entries_digest); 4. the last hash is the checkpoint's head and a trusted key signed
    the checkpoint, the same one the record copied.
    """
    from opsdsl.audit.ledger import Checkpoint, LedgerError, entry_hash

    where = EXCERPT_FILE
    if not isinstance(excerpt, dict) or excerpt.get("format") != EXCERPT_FORMAT:
        return [f"{where}: not a ledger excerpt ({EXCERPT_FORMAT})"], "unreadable"
    entries, before = excerpt.get("entries"), excerpt.get("before")
    if not isinstance(entries, list) or not entries or not isinstance(before, dict):
        return [f"{where}: `entries` (non-empty) and `before` are required"], "unreadable"
    problems: list[str] = []
    # 1-2. Shape, then the chain: each hash recomputed, each link to the previous hash.
    complete = excerpt.get("complete") is True  # else only the run's entries: no links to follow between them
    prev = before.get("hash")
    expected_seq = before.get("seq")
    run = record.get("run")
    own: list[dict] = []
    own_hashes: list[str | None] = []  # recomputed from content: what a hashes digest is taken over
    for index, entry in enumerate(entries):
        label = f"{where}: entry {index + 1}"
        if not _entry_shape(entry):
            problems.append(f"{label}: not a ledger entry {{seq, ts, run, kind, data, prev, hash}}")
            return problems, "broken"
        label = f"{where}: seq {entry['seq']}"
        if complete and isinstance(expected_seq, int) and entry["seq"] != expected_seq + 1:
            problems.append(f"{label}: follows seq {expected_seq} (entries missing or reordered)")
        expected_seq = entry["seq"]
        if complete and entry["prev"] != prev:
            problems.append(f"{label}: its link to the entry before does not match (chain broken)")
        try:
            text = _hashed_text(entry["data"])
            recomputed = entry_hash(
                bytes.fromhex(entry["prev"]), entry["seq"], float(entry["ts"]), entry["run"], entry["kind"], text
            ).hex()
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            problems.append(f"{label}: cannot be hashed ({exc})")
            recomputed = None
        if recomputed is not None and recomputed != entry["hash"]:
            problems.append(f"{label}: content does not match its hash (changed after it was written)")
        prev = entry["hash"]
        if entry["run"] == run:
            own.append(entry)
            own_hashes.append(recomputed)
    # 3. The run's entries are the ones the signed record summarises.
    ledger = record.get("ledger") if isinstance(record.get("ledger"), dict) else {}
    if not own:
        problems.append(f"{where}: holds no entry of run {run}")
    else:
        if (own[0]["seq"], own[-1]["seq"], len(own)) != (
            ledger.get("first_seq"),
            ledger.get("last_seq"),
            ledger.get("entries"),
        ):
            problems.append(
                f"{where}: run entries {own[0]['seq']}–{own[-1]['seq']} ({len(own)}), the record says "
                f"{ledger.get('first_seq')}–{ledger.get('last_seq')} ({ledger.get('entries')})"
            )
        digest_of = ledger.get("entries_digest_of")
        digest = _own_digest(own, own_hashes, digest_of)
        if digest_of not in (None, HASHES):
            problems.append(
                f"{where}: the record digests its entries as {digest_of!r}, which this opsdsl does not know"
            )
        elif digest != ledger.get("entries_digest"):
            problems.append(
                f"{where}: the run's entries digest to {digest}, the record says {ledger.get('entries_digest')}"
            )
    if not complete:
        problems_text = (
            "incomplete (too many interleaved entries): the run's entries match the record; the chain was not exported"
        )
        return problems, problems_text
    # 4. Anchored: the chain ends at a checkpoint a trusted key signed, the one the record holds.
    raw = excerpt.get("checkpoint")
    if raw is None:
        return problems, f"chain of {len(entries)} entries intact, but no checkpoint after the run's last entry"
    try:
        checkpoint = Checkpoint.from_dict(raw)
    except LedgerError as exc:
        return [*problems, f"{where}: {exc}"], "broken"
    if checkpoint.seq != entries[-1]["seq"] or checkpoint.head.hex() != entries[-1]["hash"]:
        problems.append(f"{where}: the checkpoint (seq {checkpoint.seq}) does not vouch for the excerpt's last entry")
    problem = checkpoint.signature_problem(trusted)
    if problem:
        problems.append(f"{where}: {problem}")
    copied = ledger.get("checkpoint") if isinstance(ledger.get("checkpoint"), dict) else {}
    if (copied.get("seq"), copied.get("head")) != (checkpoint.seq, checkpoint.head.hex()):
        problems.append(f"{where}: its checkpoint is not the one the signed record holds")
    summary = (
        f"ledger excerpt: {len(entries)} entries (seq {entries[0]['seq']}–{entries[-1]['seq']}, {len(own)} of this run)"
        f" chained to checkpoint {checkpoint.seq} signed by {checkpoint.keyid[:16]}"
    )
    return problems, summary


def _hashed_text(data: dict) -> str:
    """The canonical text the ledger hashed for `data`, as read back from JSON.

    RFC 8785 writes a float of 2^53 or more as its integer digits (1.7e18 as
    1700000000000000000), which JSON reads back as an integer RFC 8785 refuses; the ledger
    only ever stores such digits for a float (it refuses such integers), so they are read
    as the float they were.
    """
    try:
        return canonical_json(data).decode("utf-8")
    except ValueError:  # rfc8785's IntegerDomainError
        return canonical_json(_big_integers_as_floats(data)).decode("utf-8")


def _big_integers_as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _big_integers_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_big_integers_as_floats(item) for item in value]
    if type(value) is int and abs(value) > _MAX_SAFE_INT:
        return float(value)
    return value


def _entry_shape(entry: object) -> bool:
    if not isinstance(entry, dict) or set(entry) != {"seq", "ts", "run", "kind", "data", "prev", "hash"}:
        return False
    return (
        type(entry["seq"]) is int
        and type(entry["ts"]) in (int, float)
        and (entry["run"] is None or isinstance(entry["run"], str))
        and isinstance(entry["kind"], str)
        and isinstance(entry["data"], dict)
        and isinstance(entry["prev"], str)
        and bool(_HEX64.fullmatch(entry["prev"]))
        and isinstance(entry["hash"], str)
        and bool(_HEX64.fullmatch(entry["hash"]))
    )


def excerpt_bytes(excerpt: Mapping[str, Any]) -> bytes:
    """An excerpt given as parsed JSON (`ledger_excerpt`'s) written as ledger_excerpt_bytes writes it."""
    entries = excerpt["entries"]
    lines = [
        entry_line(
            (
                e["seq"],
                float(e["ts"]),
                e["run"],
                e["kind"],
                _canonical(e["data"]).decode("utf-8"),
                bytes.fromhex(e["prev"]),
                bytes.fromhex(e["hash"]),
            )
        )
        for e in entries
    ]
    before = excerpt["before"]
    return compose_excerpt(
        excerpt["run"], excerpt["complete"], before["seq"], before["hash"], lines, excerpt.get("checkpoint")
    )


def iter_pack_files(envelope: bytes | None) -> Iterable[tuple[str, bytes]]:
    """The plan files to write, sorted; nothing without an envelope."""
    return sorted(plan_files(envelope).items()) if envelope else []
