"""A playbook as a DAG: our small wrapper over a networkx DiGraph.

Nodes are the playbook's steps (main and `finally:`) and one node per compensation;
edges say why one node comes after another: `needs` (written), `sequence` (implicit: the
previous step), `finally` (the finally section starts after the main steps end) and
`compensates` (a compensation undoes its step). `serialize()` returns nodes and edges
sorted, ready for canonical JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from opsdsl.errors import CompileError
from opsdsl.lang.model import Playbook, Step

MAIN, FINALLY = "steps", "finally"


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
    """The step graph of one playbook."""

    def __init__(self, playbook: Playbook) -> None:
        self.playbook = playbook
        self.graph = nx.DiGraph()
        self.execution = nx.DiGraph()  # steps and the edges that order them, no compensations
        self.index: dict[str, tuple[str, int]] = {}
        for section, steps in ((MAIN, playbook.steps), (FINALLY, playbook.finally_)):
            self._add_section(section, steps)
        self._link_finally()

    def _add_section(self, section: str, steps: tuple[Step, ...]) -> None:
        for i, step in enumerate(steps):
            self.index[step.id] = (section, i)
            self.graph.add_node(step.id, section=section)
            self.execution.add_node(step.id)
        for i, step in enumerate(steps):
            if step.needs is not None:
                for need in step.needs:
                    self._order(need, step.id, "needs")
            elif i:
                self._order(steps[i - 1].id, step.id, "sequence")
            if step.compensate is not None:
                comp = compensation_id(step.id)
                self.graph.add_node(comp, section="compensation")
                self.graph.add_edge(step.id, comp, kind="compensates")

    def _order(self, before: str, after: str, kind: str) -> None:
        self.graph.add_edge(before, after, kind=kind)
        self.execution.add_edge(before, after)

    def _link_finally(self) -> None:
        main = [s.id for s in self.playbook.steps]
        sinks = [
            s
            for s in main
            if not any(self.graph.edges[s, t]["kind"] in ("needs", "sequence") for t in self.graph.successors(s))
        ]
        for entry in self.entries(FINALLY):
            for sink in sinks:
                self._order(sink, entry, "finally")

    def entries(self, section: str = MAIN) -> list[str]:
        """Steps of `section` that wait for no step of the same section, in document order."""
        steps = self.playbook.steps if section == MAIN else self.playbook.finally_
        out = []
        for step in steps:
            preds = [
                p
                for p in self.graph.predecessors(step.id)
                if self.graph.edges[p, step.id]["kind"] in ("needs", "sequence")
            ]
            if not preds:
                out.append(step.id)
        return out

    def validate(self) -> None:
        """1. acyclic; 2. every step reachable from an entry step.

        In a DAG every node is reachable from a node without predecessors, so (2) holds
        when the only such nodes are the main section's entry steps.
        """
        if not nx.is_directed_acyclic_graph(self.execution):
            cycle = nx.find_cycle(self.execution)
            raise GraphError("dependency cycle: " + " → ".join([a for a, _ in cycle] + [cycle[0][0]]))
        entries = set(self.entries(MAIN))
        unreached = sorted(n for n, degree in self.execution.in_degree() if degree == 0 and n not in entries)
        if unreached:
            raise GraphError("steps not reachable from an entry step: " + ", ".join(unreached))

    def order(self) -> list[str]:
        """A topological order of the steps; ties go to document order (main before finally)."""
        rank = {sid: (0 if section == MAIN else 1, i) for sid, (section, i) in self.index.items()}
        return list(nx.lexicographical_topological_sort(self.execution, key=lambda n: rank[n]))

    def edges(self) -> list[Edge]:
        return sorted(
            (Edge(a, b, data["kind"]) for a, b, data in self.graph.edges(data=True)),
            key=lambda e: (e.source, e.target, e.kind),
        )

    def serialize(self) -> dict:
        return {
            "entry": self.entries(MAIN),
            "order": self.order(),
            "edges": [{"from": e.source, "to": e.target, "kind": e.kind} for e in self.edges()],
        }
