"""The live view of a running playbook: rich on a terminal, JSON lines otherwise.

The scheduler hands the view the plan at `begin`, every ledger entry as it is appended,
and the outcome at `end`; the view only shows, it never decides. Modes:

- `rich`   a table that updates in place: one row per step, its state, attempts, time, note
- `json`   one JSON object a line, flushed at once (a log shipper reads it live)
- `text`   one plain line per significant entry, for dumb terminals and log files
- `quiet`  nothing
- `auto`   rich if the stream is a terminal, else json

Entries are already redacted when they get here. rich is imported only when a rich view
is made, so that `opsdsl run --log-format json` does not pay for it. The step-state model
the rich view draws (Board, StepRow, TRANSITIONS) is in `opsdsl.runtime.board`; its names
are importable from here too.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from opsdsl.audit import entries as E
from opsdsl.runtime.board import (
    AWAITING,
    DECIDED_FAILED,
    DECIDED_RETRY,
    DECIDED_SUCCEEDED,
    FAILED,
    IN_DOUBT,
    INTERRUPTED,
    PENDING,
    RUN_OVER,
    RUNNING,
    SKIPPED,
    STOPPED,
    SUCCEEDED,
    TRANSITIONS,
    Board,
    StepRow,
    _count,
    policy_note,
    shorten,
)

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

__all__ = [
    "AWAITING",
    "DECIDED_FAILED",
    "DECIDED_RETRY",
    "DECIDED_SUCCEEDED",
    "FAILED",
    "INTERRUPTED",
    "IN_DOUBT",
    "MODES",
    "PENDING",
    "RUNNING",
    "RUN_OVER",
    "SKIPPED",
    "STOPPED",
    "SUCCEEDED",
    "TRANSITIONS",
    "Board",
    "JsonView",
    "QuietView",
    "RichView",
    "StepRow",
    "TextView",
    "View",
    "approve_command",
    "format_elapsed",
    "make_view",
    "policy_note",
    "shorten",
    "summary_lines",
]

MODES = ("auto", "rich", "json", "text", "quiet")


class View(Protocol):
    """What the scheduler calls while a run goes: once `begin`, each entry, once `end`."""

    def begin(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None: ...

    def entry(self, entry: dict[str, Any]) -> None: ...

    def end(self, status: str, summary: dict[str, Any]) -> None: ...


def make_view(mode: str, stream: TextIO | None = None) -> View:
    """The view for `mode` writing to `stream` (stderr when None, looked up at call time)."""
    out = sys.stderr if stream is None else stream
    if mode == "auto":
        mode = "rich" if _isatty(out) else "json"
    if mode == "rich":
        return RichView(out)
    if mode == "json":
        return JsonView(out)
    if mode == "text":
        return TextView(out)
    if mode == "quiet":
        return QuietView()
    raise ValueError(f"unknown view mode {mode!r} (expected one of {', '.join(MODES)})")


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


# ---------------------------------------------------------------------------------------
# Words shared by the human views


def approve_command(run_id: str, step: str) -> str:
    """The command that lets a paused run go on, ready to paste."""
    return f"opsdsl approve {shlex.quote(run_id)} {shlex.quote(step)} --by NAME"


def summary_lines(run_id: str, status: str, summary: dict[str, Any]) -> list[str]:
    """The closing words of a run: its outcome, then one approve command per pending step."""
    pending = list(summary.get("pending_approvals") or [])
    line = f"run {run_id} {status}"
    if summary.get("error"):
        line += f": {shorten(summary['error'], None)}"
    if summary.get("incident_folder"):
        line += f" · incident folder {summary['incident_folder']}"
    doubt = list(summary.get("in_doubt") or [])
    if pending:
        line += f" · {_count(len(pending), 'approval')} pending"
    if doubt:
        line += f" · {_count(len(doubt), 'step')} in doubt after a crash"
    lines = [line, *(f"to continue: {approve_command(run_id, step)}" for step in pending)]
    lines += [f"to continue: opsdsl decide {run_id} {step} --as retry|succeeded|failed --by NAME" for step in doubt]
    if pending or doubt:
        lines.append(f"then: opsdsl resume {run_id}")
    return lines


# ---------------------------------------------------------------------------------------
# The views


class QuietView:
    """Shows nothing (`--quiet`); the ledger still has everything."""

    def begin(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        pass

    def entry(self, entry: dict[str, Any]) -> None:
        pass

    def end(self, status: str, summary: dict[str, Any]) -> None:
        pass


# Node fields a log reader needs to follow the run; `with` and the rest stay in the plan.
_NODE_FIELDS = ("id", "name", "action", "section", "risk", "for")


class JsonView:
    """One compact JSON object a line, flushed at once, for log shippers and scripts.

    Every line carries `event` and `run` (the run id), so lines of concurrent runs can be
    told apart; an entry line is the ledger entry itself plus `event`.
    """

    def __init__(self, stream: TextIO) -> None:
        self._out = stream
        self._run_id: str | None = None

    def begin(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        self._run_id = run.get("id")
        about = {k: v for k, v in run.items() if k != "id"}
        shown = [{k: node[k] for k in _NODE_FIELDS if k in node} for node in nodes]
        self._write({**about, "event": "begin", "run": self._run_id, "nodes": shown})

    def entry(self, entry: dict[str, Any]) -> None:
        self._write({**entry, "event": "entry"})

    def end(self, status: str, summary: dict[str, Any]) -> None:
        self._write({**summary, "event": "end", "run": self._run_id, "status": status})

    def _write(self, obj: dict[str, Any]) -> None:
        # default=str: a stray Path or datetime must not stop a run halfway through its log
        self._out.write(json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str) + "\n")
        self._out.flush()


class TextView:
    """Plain lines without colour, one per significant entry: `12:00:01 ✓ drain succeeded (1 attempt)`.

    Times are local wall-clock time of the entry.
    """

    def __init__(self, stream: TextIO) -> None:
        self._out = stream
        self._run_id = "?"
        self._max_attempts: dict[str, int] = {}

    def begin(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        self._run_id = str(run.get("id", "?"))
        self._max_attempts = {n["id"]: int((n.get("retry") or {}).get("attempts") or 1) for n in nodes}
        steps = sum(1 for n in nodes if n.get("section") != "compensation")
        head = f"{run.get('pack', '?')} / {run.get('playbook', '?')} / {run.get('severity', '?')} / run {self._run_id}"
        self._line(time.time(), f"▶ {head} (incident {run.get('incident_id', '?')}, {_count(steps, 'step')})")

    def entry(self, entry: dict[str, Any]) -> None:
        describe = _DESCRIBE.get(entry.get("kind", ""))
        text = describe(self, entry.get("data") or {}) if describe else None
        if text:
            self._line(entry.get("ts") or time.time(), text)

    def end(self, status: str, summary: dict[str, Any]) -> None:
        now = time.time()
        for i, line in enumerate(summary_lines(self._run_id, status, summary)):
            self._line(now, f"{_RUN_ICONS.get(status, '■')} {line}" if i == 0 else f"→ {line}")

    def _line(self, ts: float, text: str) -> None:
        self._out.write(f"{time.strftime('%H:%M:%S', time.localtime(ts))} {text}\n")
        self._out.flush()

    # One describer per entry kind; None means "not worth a line".

    def _run_started(self, data: dict[str, Any]) -> str:
        reason, by = data.get("reason", "start"), data.get("by")
        text = {"start": "run started", "resume": "run resumed", "approval": "run resumed after approval"}.get(
            reason, f"run started ({reason})"
        )
        return f"▶ {text}" + (f" by {by}" if by else "")

    def _plan_verified(self, data: dict[str, Any]) -> str:
        return f"✓ plan verified (trust {data.get('trust', '?')}, keys {', '.join(data.get('keyids', [])) or '?'})"

    def _policy_decision(self, data: dict[str, Any]) -> str | None:
        note = policy_note(data, None)
        if not note:
            return None
        icon = {"deny": "✗", "require_approval": "⏸"}.get(data.get("decision", ""), "!")
        return f"{icon} {data.get('step')} {note}"

    def _step_intent(self, data: dict[str, Any]) -> str:
        step, attempt = data.get("step", "?"), int(data.get("attempt") or 1)
        most = self._max_attempts.get(step, 1)
        if attempt == 1:
            return " ".join(word for word in ("▶", step, data.get("action"), "started") if word)
        return f"▶ {step} retrying (attempt {attempt}" + (f" of {most})" if most >= attempt else ")")

    def _attempt_failed(self, data: dict[str, Any]) -> str:
        return (
            f"↻ {data.get('step')} attempt {data.get('attempt', '?')} failed: {shorten(data.get('error'), None)};"
            f" retry in {float(data.get('retry_in') or 0):.1f}s"
        )

    def _step_succeeded(self, data: dict[str, Any]) -> str:
        return f"✓ {data.get('step')} succeeded ({_count(int(data.get('attempts') or 1), 'attempt')})"

    def _step_failed(self, data: dict[str, Any]) -> str:
        step, attempts = data.get("step"), int(data.get("attempts") or 0)
        if data.get("denied_by"):
            text = f"✗ {step} failed: denied by policy {data['denied_by']}"
        else:
            tried = f" ({_count(attempts, 'attempt')})" if attempts else ""
            text = f"✗ {step} failed{tried}: {shorten(data.get('error'), None)}"
        return text + (" (continue_on_error: the run goes on)" if data.get("continue_on_error") else "")

    def _step_skipped(self, data: dict[str, Any]) -> str:
        return f"↷ {data.get('step')} skipped (when: {shorten(data.get('when'), None)})"

    def _step_in_doubt(self, data: dict[str, Any]) -> str:
        return f"? {data.get('step')} in doubt: attempt {data.get('attempt', '?')} was cut off mid-flight"

    def _step_decided(self, data: dict[str, Any]) -> str:
        return f"? {data.get('step')} decided {data.get('decision', '?')} by {data.get('by', '?')}"

    def _approval_requested(self, data: dict[str, Any]) -> str:
        who = ", ".join(data.get("approvers", [])) or "anyone"
        text = f"⏸ {data.get('step')} awaiting approval ({data.get('min_approvals', 1)} of {who})"
        return text + (f": {shorten(data['message'], None)}" if data.get("message") else "")

    def _approval_recorded(self, data: dict[str, Any]) -> str:
        step, by = data.get("step"), data.get("by", "?")
        text = f"✗ {step} approval denied by {by}" if data.get("decision") == "deny" else f"✓ {step} approved by {by}"
        return text + (f": {shorten(data['comment'], None)}" if data.get("comment") else "")

    def _approval_timed_out(self, data: dict[str, Any]) -> str:
        return f"⏸ {data.get('step')} approval timed out: {data.get('outcome', '?')}"

    def _run_acknowledged(self, data: dict[str, Any]) -> str:
        return f"· incident acknowledged by {data.get('by', '?')}"

    def _evidence_added(self, data: dict[str, Any]) -> str:
        return f"· {data.get('step')} evidence {data.get('name', '')}: {_count(len(data.get('files', [])), 'file')}"

    def _run_paused(self, data: dict[str, Any]) -> str:
        waiting = ", ".join(f"{w.get('step')} ({w.get('reason')})" for w in data.get("waiting", []))
        return f"⏸ run paused, waiting for {waiting or 'nothing'}"

    def _run_interrupted(self, data: dict[str, Any]) -> str:
        return f"⊘ run interrupted; cancelled: {', '.join(data.get('running', [])) or 'nothing'}"

    def _run_finished(self, data: dict[str, Any]) -> str:
        status = data.get("status", "?")
        text = f"{_RUN_ICONS.get(status, '■')} run {status}"
        if data.get("error"):
            text += f": {shorten(data['error'], None)}"
        for label in ("failed_steps", "compensated"):
            if data.get(label):
                text += f"; {label.replace('_steps', '')}: {', '.join(data[label])}"
        return text


_RUN_ICONS = {"succeeded": "✓", "failed": "✗", "refused": "✗", "cancelled": "⊘", "paused": "⏸", "interrupted": "⊘"}

_DESCRIBE: dict[str, Callable[[TextView, dict[str, Any]], str | None]] = {
    E.RUN_STARTED: TextView._run_started,
    E.PLAN_VERIFIED: TextView._plan_verified,
    E.POLICY_DECISION: TextView._policy_decision,
    E.STEP_INTENT: TextView._step_intent,
    E.ATTEMPT_FAILED: TextView._attempt_failed,
    E.STEP_SUCCEEDED: TextView._step_succeeded,
    E.STEP_FAILED: TextView._step_failed,
    E.STEP_SKIPPED: TextView._step_skipped,
    E.STEP_IN_DOUBT: TextView._step_in_doubt,
    E.STEP_DECIDED: TextView._step_decided,
    E.APPROVAL_REQUESTED: TextView._approval_requested,
    E.APPROVAL_RECORDED: TextView._approval_recorded,
    E.APPROVAL_TIMED_OUT: TextView._approval_timed_out,
    E.RUN_ACKNOWLEDGED: TextView._run_acknowledged,
    E.EVIDENCE_ADDED: TextView._evidence_added,
    E.RUN_PAUSED: TextView._run_paused,
    E.RUN_INTERRUPTED: TextView._run_interrupted,
    E.RUN_FINISHED: TextView._run_finished,
}


# icon, style; a running step shows a spinner instead of an icon
_LOOK = {
    PENDING: ("·", "dim"),
    RUNNING: ("", "cyan"),
    SUCCEEDED: ("✓", "green"),
    FAILED: ("✗", "bold red"),
    SKIPPED: ("↷", "dim"),
    AWAITING: ("⏸", "bold yellow"),
    IN_DOUBT: ("?", "bold magenta"),
    INTERRUPTED: ("⊘", "yellow"),
}


_RUN_STYLES = {
    "succeeded": "bold green",
    "failed": "bold red",
    "refused": "bold red",
    "cancelled": "bold magenta",
    "paused": "bold yellow",
}


def format_elapsed(seconds: float | None) -> str:
    """`0.4s`, `12.3s`, `2m05s`, `1h02m`: short enough for a narrow column."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class RichView:
    """A table of the run's steps that updates in place (rich `Live`), then a closing summary.

    Entries arrive on the scheduler's thread and rich redraws from its own, so the board is
    read and written under one lock. All text goes in as `Text`, never markup: an error
    message with `[brackets]` must show as it is.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        force_terminal: bool | None = None,
        width: int | None = None,
        refresh_per_second: float = 8,
    ) -> None:
        from rich.console import Console
        from rich.spinner import Spinner
        from rich.text import Text

        self.console = Console(file=stream, force_terminal=force_terminal, width=width, highlight=False)
        self._refresh_per_second = refresh_per_second
        self._lock = threading.Lock()
        self._board = Board({}, [])
        self._spinner = Spinner("dots", text=Text("running", style=_LOOK[RUNNING][1]), style=_LOOK[RUNNING][1])
        self._live: Live | None = None

    def begin(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        from rich.live import Live

        if self._live is not None:  # a run that never ended: keep its last frame, start afresh
            self._live.stop()
        with self._lock:
            self._board = Board(run, nodes)
        self._live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=self._refresh_per_second,
            transient=False,
        )
        self._live.start()

    def entry(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._board.apply(entry)

    def end(self, status: str, summary: dict[str, Any]) -> None:
        from rich.text import Text

        with self._lock:
            self._board.status = status
        if self._live is not None:
            self._live.stop()
            self._live = None
        run_id = str(self._board.run.get("id", "?"))
        for i, line in enumerate(summary_lines(run_id, status, summary)):
            style = _RUN_STYLES.get(status, "bold") if i == 0 else "bold"
            self.console.print(Text(line, style=style), soft_wrap=True)

    def _render(self) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            board, now = self._board, time.time()
            run = board.run
            severity = str(run.get("severity", "?"))
            header = Text.assemble(
                (str(run.get("pack", "?")), "bold"),
                " / ",
                (str(run.get("playbook", "?")), "bold"),
                " / ",
                (severity, "bold red" if severity in ("SEV-1", "SEV-2") else "bold"),
                f" / run {run.get('id', '?')}  ",
                (board.status, _RUN_STYLES.get(board.status, "cyan")),
            )
            if board.acknowledged_by:
                header.append(f"  (acknowledged by {board.acknowledged_by})", style="dim")
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=True, collapse_padding=True)
            table.add_column("status", no_wrap=True)
            table.add_column("step", no_wrap=True)
            table.add_column("action", no_wrap=True, style="dim")
            table.add_column("tries", justify="right", no_wrap=True)
            table.add_column("time", justify="right", no_wrap=True)
            table.add_column("note", no_wrap=True, overflow="ellipsis", ratio=1, min_width=20)
            for row in board.visible():
                table.add_row(
                    self._status_cell(row, board.over),
                    Text(row.id, style="bold" if row.section == "steps" else "italic"),
                    Text(row.action),
                    Text(self._attempts(row)),
                    Text(format_elapsed(row.elapsed(now))),
                    Text(row.note, style="red" if row.status == FAILED else ""),
                )
            return Group(header, table)

    def _status_cell(self, row: StepRow, run_over: bool) -> RenderableType:
        from rich.text import Text

        if row.status == RUNNING and not run_over:
            return self._spinner
        icon, style = _LOOK.get(row.status, ("·", ""))
        word = "not run" if row.status == PENDING and run_over else row.status
        return Text(f"{icon or '▶'} {word}", style=style)

    @staticmethod
    def _attempts(row: StepRow) -> str:
        if not row.attempts:
            return ""
        return f"{row.attempts}/{row.max_attempts}" if row.max_attempts > 1 else str(row.attempts)
