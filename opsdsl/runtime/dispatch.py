"""Runner pools, the worker's side: a step with `runner: NAME` is queued, not run here.

In the same transaction as the step's `step.intent` entry, the worker writes a `dispatch`
row (an outbox): the action, its rendered `with:`, the step's Idempotency-Key
(`RUN:STEP`, as in process) and timeout, for any `opsdsl runner --pool NAME` to claim
(opsdsl.runtime.pool_runner). The worker then waits for the row's result and returns the
outputs, or raises ActionFailed, exactly as the in-process executor does.

A row's states: `queued` → `claimed` (a runner holds it: `claimant`, `claim_epoch`,
`lease_until` on the database clock, renewed by its heartbeat) → `done` | `failed`; or
`lost`: withdrawn by the worker (the step timed out, was cancelled or interrupted), or its
runner vanished (the lease lapsed with no result) and the step may not be repeated, so it
waits in doubt for a person's decision. A lapsed lease of an idempotent step sends the row
back to `queued` with the same key; the next claim raises the epoch, so the vanished
runner's late result, fenced by (row, claimant, epoch), changes nothing.

Secrets never enter the row. The worker renders a runner step's `${{ secrets.NAME }}` as a
reference token (`DeferredSecrets`); the runner resolves it from its own environment,
secrets folder or `--secret` references, and redacts the outputs before it writes them.
A secret an expression transforms (`upper(secrets.X)`) cannot be deferred and fails the
step unrun, as does a secret value the worker knows (a `secret: true` param) in the inputs.
Each token is one read's (its index), authenticated by an HMAC under a key only drivers hold
(`STATE_DIR/dispatch-references.key`), so event data cannot forge one.

The worker's writes to a row (withdrawing it, sending a lapsed claim back to the queue) are
made in `store.transaction()`, under the run's lease: a worker whose lease another took
changes nothing (LeaseLost), so it never cancels the new owner's dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.secrets import Redactor, SecretError

QUEUED, CLAIMED, DONE, FAILED, LOST = "queued", "claimed", "done", "failed", "lost"
OUTSTANDING = (QUEUED, CLAIMED, DONE, FAILED)  # a row a restarted worker waits on, never sends again
POLL = 1.0  # seconds between a waiting step's own looks at its row (a runner's lapsed lease is seen there)
ANSWER_LOOK = 0.05  # seconds between a worker's looks, in one query, for answers to every row it waits for

_DDL = """
CREATE TABLE IF NOT EXISTS dispatch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,              -- the step's attempt (the same across re-queues)
    pool TEXT NOT NULL,
    action TEXT NOT NULL,
    inputs TEXT NOT NULL,                  -- JSON: the rendered with:, secrets as references
    secrets TEXT NOT NULL,                 -- JSON: {"names": [...], "tokens": [...]} the references
    request TEXT NOT NULL,                 -- JSON: severity, playbook, pack (ActionRequest)
    idempotency_key TEXT NOT NULL,         -- RUN:STEP, as in process
    idempotent INTEGER NOT NULL,
    timeout REAL,                          -- seconds, enforced by the runner
    state TEXT NOT NULL DEFAULT 'queued',  -- queued | claimed | done | failed | lost
    claimant TEXT,
    claim_epoch INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,                      -- the database clock (Store.now)
    created_at REAL NOT NULL,
    claimed_at REAL,
    finished_at REAL,
    result TEXT,                           -- JSON outputs (redacted at the runner)
    error TEXT,
    retryable INTEGER
);
CREATE INDEX IF NOT EXISTS dispatch_queue ON dispatch(pool, state, id);
CREATE INDEX IF NOT EXISTS dispatch_step ON dispatch(run_id, step_id, id);
CREATE TABLE IF NOT EXISTS runner_tokens (
    label TEXT PRIMARY KEY,                -- who holds it, as `opsdsl runner-token` named it
    pool TEXT NOT NULL,                    -- the one pool it may claim from
    token_sha256 TEXT NOT NULL UNIQUE,     -- the token itself is shown once, never kept
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""

_prepared: weakref.WeakSet = weakref.WeakSet()


def prepare(store: Any) -> None:
    """Create the table on first use (SQLite; outside a transaction: executescript commits
    one). On PostgreSQL it is migration 0003's and this does nothing."""
    if store not in _prepared:
        if not store.postgres:
            store.conn.executescript(_DDL)
        _prepared.add(store)


# ---- secrets as references -----------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")
# opsdsl-secret.NAME.READ.MAC: the READth read of NAME in the step's render, MAC its HMAC.
_TOKEN = re.compile(r"opsdsl-secret\.([A-Za-z0-9_]{1,128})\.([0-9]{1,6})\.([0-9a-f]{24})")
_LOOKALIKE = re.compile(r"opsdsl-secret\.")  # anything shaped like a reference, intact or not
KEY_FILE = "dispatch-references.key"


def reference_key(root: Path) -> bytes:
    """The key of the state directory's secret references (made on first use, 0600). Only
    drivers need it, and every driver of one database needs the same one (copy it with the
    signing key): a run resumed elsewhere then renders the same references."""
    path = root / KEY_FILE
    try:
        return _key(path)
    except FileNotFoundError:
        pass
    made = root / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(os.urandom(32).hex())
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(made, path)  # atomic, and never over another process's key
    except FileExistsError:
        pass
    finally:
        made.unlink()
    return _key(path)


def _key(path: Path) -> bytes:
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise SecretError(f"{path} is not a key (64 hex digits); restore it from another driver's state directory")
    return bytes.fromhex(text)


def reference_token(key: bytes, run_id: str, step_id: str, name: str, read: int) -> str:
    """The reference of the `read`th read of secret `name` in the step's render: the same at
    every render (an approval's digest of the rendered `with:` holds), unforgeable without
    the key."""
    message = f"opsdsl-secret-reference\x00{run_id}\x00{step_id}\x00{name}\x00{read}".encode()
    mac = hmac.new(key, message, hashlib.sha256).hexdigest()[:24]
    return f"opsdsl-secret.{name}.{read}.{mac}"


class DeferredSecrets(Mapping[str, str]):
    """`secrets` as a runner step's `with:` sees it: each read is a reference token made of
    URL-unreserved characters (it survives percent-encoding), resolved at the runner."""

    def __init__(self, run_id: str, step_id: str, key: bytes) -> None:
        self.run_id, self.step_id, self.key = run_id, step_id, key
        self.reads: dict[str, int] = {}
        self.issued: list[str] = []  # the tokens, in the order they were read

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SecretError("a step with `runner:` can only read secrets named with letters, digits and `_`")
        read = self.reads.get(name, 0)
        self.reads[name] = read + 1
        token = reference_token(self.key, self.run_id, self.step_id, name, read)
        self.issued.append(token)
        return token

    def __iter__(self):
        return iter(self.reads)

    def __len__(self) -> int:
        return len(self.reads)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def check(self, rendered: dict[str, Any], redactor: Redactor) -> None:
        """SecretError unless the references in `rendered` are exactly the reads, each once
        and intact: a secret an expression changed or consumed (`upper(secrets.X)`,
        `secrets.X != ''`: the runner could not substitute it), or any reference that came
        from data (an event, an output) rather than a read, fails the step unrun. So does a
        secret value the worker knows: it would cross to the runner in the row."""
        text = json.dumps(rendered, sort_keys=True)
        found: dict[str, int] = {}
        for match in _TOKEN.finditer(text):
            found[match.group(0)] = found.get(match.group(0), 0) + 1
        for token in self.issued:
            if found.get(token, 0) == 0:
                name = _TOKEN.fullmatch(token).group(1)  # type: ignore[union-attr]
                raise SecretError(
                    f"secret `{name}` is changed by an expression; a step with `runner:` sends a secret"
                    " as a reference its runner resolves, so it can only be used as it is"
                )
        issued = set(self.issued)
        if any(token not in issued or count > 1 for token, count in found.items()) or len(
            _LOOKALIKE.findall(text)
        ) != sum(found.values()):
            raise SecretError("the step's inputs carry a secret reference that no expression of the step read")
        if redactor and redactor.data(rendered) != rendered:
            raise SecretError(
                "the step's inputs carry a secret value (a `secret: true` param?); a step with `runner:`"
                " may only pass secrets as `${{ secrets.NAME }}`, which its runner resolves"
            )


def resolve_references(action: str, inputs: Any, refs: Mapping[str, Any], secrets: Any) -> Any:
    """The runner's side: `inputs` with each reference replaced by the secret's value (from
    `secrets`, the runner's own), percent-encoded where its URL position encoded it."""
    from opsdsl.lang.taint import ORIGIN, url_component, url_keys

    tokens = set(refs.get("tokens") or ())  # the references the driver issued, and only those
    if not tokens:
        return inputs
    urls = url_keys(action)

    def value(match: re.Match, prefix: str | None) -> str:
        name = match.group(1)
        if match.group(0) not in tokens:
            return match.group(0)
        secret = secrets.require(name)
        if prefix is None:
            return secret
        return secret if url_component(prefix) == ORIGIN else quote(secret, safe="")

    def text(string: str, url: bool) -> str:
        if not url:
            return _TOKEN.sub(lambda m: value(m, None), string)
        out, last = [], 0
        for match in _TOKEN.finditer(string):
            out.append(string[last : match.start()])
            out.append(value(match, string[: match.start()]))
            last = match.end()
        return "".join(out) + string[last:]

    def walk(item: Any, url: bool) -> Any:
        if isinstance(item, str):
            return text(item, url)
        if isinstance(item, dict):
            return {key: walk(v, url) for key, v in item.items()}
        if isinstance(item, list):
            return [walk(v, url) for v in item]
        return item

    if not isinstance(inputs, dict):
        return walk(inputs, False)
    return {key: walk(v, key in urls) for key, v in inputs.items()}


# ---- the worker's side ---------------------------------------------------------------------


class DispatchLost(Exception):
    """The runner holding a step that may not be repeated vanished (its lease lapsed with no
    result): the step goes in doubt."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Dispatcher:
    """Queues one runner step's attempts for its pool and awaits their results (an Executor)."""

    def __init__(self, store: Any, node: Mapping[str, Any], tag: Any = None) -> None:
        # `tag` is ignored: each reference carries its own MAC (accepted for older callers).
        self.store = store
        self.pool = node["runner"]
        self.idempotent = bool(node.get("idempotent"))
        self.row_id: int | None = None
        prepare(store)

    def knows(self, action: str) -> bool:  # the runner decides: an unknown action fails there
        return True

    def enqueue(self, request: ActionRequest) -> None:
        """Write the attempt's row; called inside the transaction of its `step.intent`."""
        found = list(_references(request.inputs))
        key = reference_key(self.store.root) if found else b""
        tokens = sorted(
            {
                match.group(0)
                for match in found
                if hmac.compare_digest(
                    match.group(0),
                    reference_token(key, request.run_id, request.step_id, match.group(1), int(match.group(2))),
                )
            }
        )
        names = sorted({_TOKEN.fullmatch(token).group(1) for token in tokens})  # type: ignore[union-attr]
        extra = {"severity": request.severity, "playbook": request.playbook, "pack": request.pack}
        # The database's clock inside the statement: no round trip of its own in the intent's transaction.
        cursor = self.store.conn.execute(
            "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
            " idempotency_key, idempotent, timeout, state, created_at)"
            f" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,{self.store.now_sql()})",
            (
                request.run_id,
                request.step_id,
                request.attempt,
                self.pool,
                request.action,
                json.dumps(request.inputs, sort_keys=True),
                json.dumps({"names": names, "tokens": tokens}),
                json.dumps(extra, sort_keys=True),
                request.idempotency_key,
                1 if self.idempotent else 0,
                request.timeout,
                QUEUED,
            ),
        )
        self.row_id = cursor.lastrowid

    def adopt(self, run_id: str, step_id: str, attempt: int) -> bool:
        """Whether a row of this attempt is still outstanding (a crash left it): then the
        worker waits on it rather than sending the step again."""
        row = self.store.conn.execute(
            "SELECT id, state FROM dispatch WHERE run_id = ? AND step_id = ? AND attempt = ? ORDER BY id DESC LIMIT 1",
            (run_id, step_id, attempt),
        ).fetchone()
        if row is None or row[1] not in OUTSTANDING:
            return False
        self.row_id = int(row[0])
        return True

    async def execute(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        """The row's outputs once a runner wrote them; ActionFailed as the action raised it;
        DispatchLost when its runner vanished and the step may not be repeated."""
        assert self.row_id is not None, "enqueue or adopt first"
        try:
            row = self._look()
            while True:
                if row is None:
                    raise DispatchLost(f"dispatch {self.row_id} is gone")
                state, epoch, lease_until, result, error, retryable, lapsed = row
                if state == DONE:
                    return json.loads(result or "{}")
                if state == FAILED:
                    outputs = json.loads(result or "{}")
                    raise ActionFailed(error or "the runner reported a failure", outputs, bool(retryable))
                if state == LOST:
                    raise DispatchLost(error or f"dispatch {self.row_id} was lost")
                if state == CLAIMED and lease_until is not None and lapsed:
                    self._lapsed(int(epoch))
                    row = self._look()
                    continue
                # The worker's one look for every waiting step's answer brings this row's when
                # it comes; else the step looks itself after POLL.
                row = await _answers(self.store).wait(self.row_id, POLL) or self._look()
        except asyncio.CancelledError:
            self.withdraw("withdrawn by the worker: the step timed out, or its run was cancelled or interrupted")
            raise

    def _look(self) -> tuple | None:
        """The row as the step needs it, with whether the runner's lease is past (by the
        database's clock, in the same statement)."""
        return self.store.conn.execute(
            "SELECT state, claim_epoch, lease_until, result, error, retryable,"
            f" CASE WHEN lease_until < {self.store.now_sql()} THEN 1 ELSE 0 END FROM dispatch WHERE id = ?",
            (self.row_id,),
        ).fetchone()

    def _lapsed(self, epoch: int) -> None:
        """Its runner's lease lapsed with no result: back to the queue (same row, same key)
        if the step may be repeated, else lost (the step goes in doubt). Fenced: LeaseLost
        when the run is no longer this worker's (the new owner decides)."""
        if self.idempotent:
            self._write(
                "UPDATE dispatch SET state = ?, claimant = NULL, lease_until = NULL"
                " WHERE id = ? AND state = ? AND claim_epoch = ?",
                (QUEUED, self.row_id, CLAIMED, epoch),
            )
        else:
            self._write(
                "UPDATE dispatch SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state = ? AND claim_epoch = ?",
                (LOST, "its runner's lease lapsed with no result", self.store.now(), self.row_id, CLAIMED, epoch),
            )

    def withdraw(self, why: str) -> None:
        """Nobody waits for the row any more: a queued one is never claimed, and a runner
        holding it finds its heartbeat refused and stops the action. Not when the run's lease
        was lost (the cancel may be the lease's): the new owner has adopted the row."""
        # Unreachable database: the runner's lease lapses instead. LeaseLost: not ours to withdraw.
        with contextlib.suppress(Exception):
            self._write(
                "UPDATE dispatch SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state IN (?, ?)",
                (LOST, why, self.store.now(), self.row_id, QUEUED, CLAIMED),
            )

    def _write(self, sql: str, parameters: tuple) -> None:
        """One write in `store.transaction()`, whose fence check (the run's lease, when a
        worker drives it) comes first; inside the caller's transaction, a part of it."""
        if self.store.conn.in_transaction:
            self.store.conn.execute(sql, parameters)
            return
        with self.store.transaction():
            self.store.conn.execute(sql, parameters)


class _Answers:
    """A worker's looks for the answers its steps wait for: one query every ANSWER_LOOK for
    all the rows waited on, handing each step whose row is answered (done, failed or lost)
    that row. Reads only: no transaction, however many steps wait, and no second read of
    the row by its step. A step also looks at its row itself every POLL (a lapsed runner
    lease is seen there)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.waiting: dict[int, asyncio.Future] = {}
        self.task: asyncio.Task | None = None

    async def wait(self, row_id: int, timeout: float) -> tuple | None:
        """The answered row (as `Dispatcher._look` reads it), or None after `timeout` seconds."""
        answer = self.waiting[row_id] = self.loop.create_future()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._look(), name="opsdsl-dispatch-answers")
        try:
            return await asyncio.wait_for(asyncio.shield(answer), timeout)
        except TimeoutError:
            return None
        finally:
            if self.waiting.get(row_id) is answer:
                del self.waiting[row_id]

    async def _look(self) -> None:
        while self.waiting:
            await asyncio.sleep(ANSWER_LOOK)
            ids = sorted(self.waiting)
            if not ids:
                return
            try:
                answered = self._answered(ids)
            except Exception:  # e.g. the database is away: each step's own look says so
                continue
            for row in answered:
                answer = self.waiting.get(int(row[0]))
                if answer is not None and not answer.done():
                    answer.set_result(tuple(row[1:]))

    def _answered(self, ids: list[int]) -> list[Any]:
        columns = "id, state, claim_epoch, lease_until, result, error, retryable, 0"
        if self.store.postgres:
            rows = self.store.conn.execute(
                f"SELECT {columns} FROM dispatch WHERE id = ANY(?) AND state IN (?, ?, ?)", (ids, DONE, FAILED, LOST)
            )
        else:
            marks = ", ".join("?" * len(ids))
            rows = self.store.conn.execute(
                f"SELECT {columns} FROM dispatch WHERE id IN ({marks}) AND state IN (?, ?, ?)",
                (*ids, DONE, FAILED, LOST),
            )
        return rows.fetchall()


_watchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _answers(store: Any) -> _Answers:
    """The store's answer watcher on the running loop (one per worker process)."""
    loop = asyncio.get_running_loop()
    found = _watchers.get(store)
    if found is None or found.loop is not loop:
        found = _watchers[store] = _Answers(store, loop)
    return found


def _references(value: Any):
    """The reference tokens in a value, as matches."""
    if isinstance(value, str):
        yield from _TOKEN.finditer(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


# ---- runner tokens (runners that reach the database only through `opsdsl serve`) -------------

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def add_runner_token(store: Any, pool: str, label: str) -> str:
    """A new token for `pool`, held by `label`; only its SHA-256 is kept. ValueError for a
    bad or taken label."""
    import secrets as _random

    if not _LABEL.match(label):
        raise ValueError(f"token label {label!r}: letters, digits, `_`, `.` and `-` (at most 63)")
    prepare(store)
    token = "opsr_" + _random.token_urlsafe(32)
    with store.transaction():
        if store.conn.execute("SELECT 1 FROM runner_tokens WHERE label = ?", (label,)).fetchone():
            raise ValueError(f"a runner token labelled {label!r} exists; revoke it or choose another label")
        store.conn.execute(
            "INSERT INTO runner_tokens (label, pool, token_sha256, created_at) VALUES (?, ?, ?, ?)",
            (label, pool, hashlib.sha256(token.encode()).hexdigest(), store.now()),
        )
    return token


def revoke_runner_token(store: Any, label: str) -> bool:
    prepare(store)
    with store.transaction():
        cursor = store.conn.execute(
            "UPDATE runner_tokens SET revoked_at = ? WHERE label = ? AND revoked_at IS NULL", (store.now(), label)
        )
    return cursor.rowcount > 0


def runner_token(store: Any, token: str) -> tuple[str, str] | None:
    """(label, pool) of a live token, else None."""
    prepare(store)
    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    row = store.conn.execute(
        "SELECT label, pool FROM runner_tokens WHERE token_sha256 = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    return (row[0], row[1]) if row else None
