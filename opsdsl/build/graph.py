"""A playbook as a DAG: a small graph of our own (plain dicts, no networkx: the import
alone cost more than building and sorting every playbook of a big tree).

Nodes are the playbook's steps (main and `finally:`) and one node per compensation;
edges say why one node comes after another: `needs` (written), `sequence` (implicit: the
previous step), `finally` (the finally section starts after the main steps end) and
`compensates` (a compensation undoes its step). `serialize()` returns nodes and edges
sorted, ready for canonical JSON.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opsdsl.errors import CompileError

if TYPE_CHECKING:  # either model: the checked one (`opsdsl compile`) or pydantic's
    from opsdsl.lang.model import Playbook, Step

MAIN, FINALLY = "steps", "finally"
_ORDERING = ("needs", "sequence")


def compensation_id(step_id: str) -> str:
    return f"{step_id}.compensate"


class GraphError(CompileError):
    """The playbook's graph is not a DAG every step of which can be reached."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str


class PlaybookGraph:
    """The step graph of one playbook.

    `kinds` holds every edge, `(source, target) → kind` (a second edge between the same
    two nodes replaces the first's kind); `after` and `before` are the execution graph
    (steps and the edges that order them, no compensations) as successor and predecessor
    lists, every step a key, in document order (main before finally).
    """

    def __init__(self, playbook: Playbook) -> None:
        self.playbook = playbook
        self.kinds: dict[tuple[str, str], str] = {}
        self.after: dict[str, list[str]] = {}
        self.before: dict[str, list[str]] = {}
        self.index: dict[str, tuple[str, int]] = {}
        for section, steps in ((MAIN, playbook.steps), (FINALLY, playbook.finally_)):
            self._add_section(section, steps)
        self._link_finally()

    def _add_node(self, node: str) -> None:
        if node not in self.after:
            self.after[node] = []
            self.before[node] = []

    def _add_section(self, section: str, steps: tuple[Step, ...]) -> None:
        for i, step in enumerate(steps):
            self.index[step.id] = (section, i)
            self._add_node(step.id)
        for i, step in enumerate(steps):
            if step.needs is not None:
                for need in step.needs:
                    self._order(need, step.id, "needs")
            elif i:
                self._order(steps[i - 1].id, step.id, "sequence")
            if step.compensate is not None:
                self.kinds[step.id, compensation_id(step.id)] = "compensates"

    def _order(self, before: str, after: str, kind: str) -> None:
        self._add_node(before)
        self._add_node(after)
        if after not in self.after[before]:
            self.after[before].append(after)
            self.before[after].append(before)
        self.kinds[before, after] = kind

    def _ordered_by(self, step_id: str) -> bool:
        """Whether a step of the same section must end before `step_id` starts."""
        return any(self.kinds[p, step_id] in _ORDERING for p in self.before.get(step_id, ()))

    def _link_finally(self) -> None:
        sinks = [
            s.id
            for s in self.playbook.steps
            if not any(self.kinds[s.id, t] in _ORDERING for t in self.after.get(s.id, ()))
        ]
        for entry in self.entries(FINALLY):
            for sink in sinks:
                self._order(sink, entry, "finally")

    def entries(self, section: str = MAIN) -> list[str]:
        """Steps of `section` that wait for no step of the same section, in document order."""
        steps = self.playbook.steps if section == MAIN else self.playbook.finally_
        return [step.id for step in steps if not self._ordered_by(step.id)]

    def _cycle(self) -> list[str] | None:
        """The nodes of one cycle of the execution graph, or None when it is a DAG."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for root in self.after:
            if root in state:
                continue
            path, stack = [root], [iter(self.after[root])]
            state[root] = 1
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(child) == 1:
                    return path[path.index(child) :]
                elif child not in state:
                    state[child] = 1
                    path.append(child)
                    stack.append(iter(self.after[child]))
        return None

    def validate(self) -> None:
        """1. acyclic; 2. every step reachable from an entry step.

        In a DAG every node is reachable from a node without predecessors, so (2) holds
        when the only such nodes are the main section's entry steps.
        """
        cycle = self._cycle()
        if cycle is not None:
            raise GraphError("dependency cycle: " + " → ".join([*cycle, cycle[0]]))
        entries = set(self.entries(MAIN))
        unreached = sorted(n for n, preds in self.before.items() if not preds and n not in entries)
        if unreached:
            raise GraphError("steps not reachable from an entry step: " + ", ".join(unreached))

    def order(self) -> list[str]:
        """A topological order of the steps; ties go to document order (main before finally)."""
        rank = {sid: (0 if section == MAIN else 1, i) for sid, (section, i) in self.index.items()}
        waiting = {n: len(preds) for n, preds in self.before.items() if preds}
        ready = [(rank[n], n) for n, preds in self.before.items() if not preds]
        heapq.heapify(ready)
        out = []
        while ready:
            _, node = heapq.heappop(ready)
            out.append(node)
            for child in self.after[node]:
                waiting[child] -= 1
                if not waiting[child]:
                    del waiting[child]
                    heapq.heappush(ready, (rank[child], child))
        return out

    def edges(self) -> list[Edge]:
        return sorted(
            (Edge(a, b, kind) for (a, b), kind in self.kinds.items()),
            key=lambda e: (e.source, e.target, e.kind),
        )

    def serialize(self) -> dict:
        # `edges()`'s order: (source, target) pairs are unique, so sorting them sorts by kind too.
        return {
            "entry": self.entries(MAIN),
            "order": self.order(),
            "edges": [{"from": a, "to": b, "kind": kind} for (a, b), kind in sorted(self.kinds.items())],
        }
