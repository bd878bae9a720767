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

from opsdsl.model import Playbook, Step

MAIN, FINALLY = "steps", "finally"
EXECUTION_EDGES = ("needs", "sequence", "finally")


def compensation_id(step_id: str) -> str:
    return f"{step_id}.compensate"


class GraphError(ValueError):
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
        self.index: dict[str, tuple[str, int]] = {}
        for section, steps in ((MAIN, playbook.steps), (FINALLY, playbook.finally_)):
            self._add_section(section, steps)
        self._link_finally()

    def _add_section(self, section: str, steps: tuple[Step, ...]) -> None:
        for i, step in enumerate(steps):
            self.index[step.id] = (section, i)
            self.graph.add_node(step.id, section=section)
        for i, step in enumerate(steps):
            if step.needs is not None:
                for need in step.needs:
                    self.graph.add_edge(need, step.id, kind="needs")
            elif i:
                self.graph.add_edge(steps[i - 1].id, step.id, kind="sequence")
            if step.compensate is not None:
                comp = compensation_id(step.id)
                self.graph.add_node(comp, section="compensation")
                self.graph.add_edge(step.id, comp, kind="compensates")

    def _link_finally(self) -> None:
        main = [s.id for s in self.playbook.steps]
        sinks = [s for s in main if not any(self.graph.edges[s, t]["kind"] in ("needs", "sequence") for t in self.graph.successors(s))]
        for entry in self.entries(FINALLY):
            for sink in sinks:
                self.graph.add_edge(sink, entry, kind="finally")

    def execution_graph(self) -> nx.DiGraph:
        """Steps and the edges that order them (compensations left out)."""
        view = nx.subgraph_view(self.graph, filter_node=lambda n: n in self.index, filter_edge=lambda a, b: self.graph.edges[a, b]["kind"] in EXECUTION_EDGES)
        return view

    def entries(self, section: str = MAIN) -> list[str]:
        """Steps of `section` that wait for no step of the same section, in document order."""
        steps = self.playbook.steps if section == MAIN else self.playbook.finally_
        out = []
        for step in steps:
            preds = [p for p in self.graph.predecessors(step.id) if self.graph.edges[p, step.id]["kind"] in ("needs", "sequence")]
            if not preds:
                out.append(step.id)
        return out

    def validate(self) -> None:
        """1. acyclic; 2. every step reachable from an entry step."""
        execution = self.execution_graph()
        if not nx.is_directed_acyclic_graph(execution):
            cycle = nx.find_cycle(execution)
            raise GraphError("dependency cycle: " + " → ".join([a for a, _ in cycle] + [cycle[0][0]]))
        reached: set[str] = set()
        for entry in self.entries(MAIN):
            reached.add(entry)
            reached |= nx.descendants(execution, entry)
        unreached = [s for s in self.index if s not in reached]
        if unreached:
            raise GraphError("steps not reachable from an entry step: " + ", ".join(sorted(unreached)))

    def order(self) -> list[str]:
        """A topological order of the steps; ties go to document order (main before finally)."""
        rank = {sid: (0 if section == MAIN else 1, i) for sid, (section, i) in self.index.items()}
        return list(nx.lexicographical_topological_sort(self.execution_graph(), key=lambda n: rank[n]))

    def edges(self) -> list[Edge]:
        return sorted((Edge(a, b, data["kind"]) for a, b, data in self.graph.edges(data=True)), key=lambda e: (e.source, e.target, e.kind))

    def serialize(self) -> dict:
        return {
            "entry": self.entries(MAIN),
            "order": self.order(),
            "edges": [{"from": e.source, "to": e.target, "kind": e.kind} for e in self.edges()],
        }
