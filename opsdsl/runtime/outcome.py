"""How driving a run ended, and the pause signal the scheduler passes between its parts."""

from __future__ import annotations

from dataclasses import dataclass, field

TIMED_OUT = "the playbook's timeout passed"
TIMEOUT_VOTER = "timeout"  # the approvals row an expired approval step gets


@dataclass
class Outcome:
    """How a drive ended: the run status and the steps people must act on."""

    status: str  # succeeded | failed | paused | interrupted
    pending: list[str] = field(default_factory=list)  # steps awaiting approval
    error: str | None = None
    in_doubt: list[str] = field(default_factory=list)  # steps a crash left undecided: `opsdsl decide`


class Paused(Exception):
    """Internal: a step is waiting for people."""
