"""`opsdsl graph`: a playbook's DAG as Mermaid, Graphviz DOT or SVG.

High-risk steps, approval gates (an `approval` step, or a step a `require_approval`
policy may stop) and compensations are drawn so a reviewer sees them at a glance.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from opsdsl.build.graph import FINALLY, PlaybookGraph
from opsdsl.errors import UsageError
from opsdsl.lang.model import Pack, Policy


@dataclass(frozen=True)
class NodeLook:
    id: str
    title: str
    detail: str
    kind: str  # "step" | "approval" | "gated" | "compensation"
    risk: str
    section: str


def _looks(pack: Pack, playbook_name: str, policies: tuple[Policy, ...]) -> tuple[list[NodeLook], PlaybookGraph]:
    from opsdsl.build.graph import compensation_id
    from opsdsl.lang.checks.review import approval_policy_covers

    playbook = pack.playbooks[playbook_name]
    graph = PlaybookGraph(playbook)
    looks = []
    for section, steps in (("steps", playbook.steps), (FINALLY, playbook.finally_)):
        for step in steps:
            gated = any(approval_policy_covers(p, pack, playbook_name, step) for p in policies)
            kind = "approval" if step.action == "approval" else "gated" if gated else "step"
            detail = (
                step.action
                + (f" · risk {step.risk}" if step.risk != "low" else "")
                + (" · needs approval" if gated else "")
            )
            looks.append(NodeLook(step.id, step.name or step.id, detail, kind, step.risk, section))
            if step.compensate is not None:
                looks.append(
                    NodeLook(
                        compensation_id(step.id),
                        f"undo {step.id}",
                        step.compensate.action,
                        "compensation",
                        "low",
                        "compensation",
                    )
                )
    return looks, graph


def _mermaid_id(node_id: str) -> str:
    return node_id.replace(".", "__")


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(pack: Pack, playbook_name: str, policies: tuple[Policy, ...] = ()) -> str:
    looks, graph = _looks(pack, playbook_name, policies)
    lines = [f"%% {pack.metadata.name} / {playbook_name} ({pack.playbooks[playbook_name].severity})", "flowchart TD"]
    shapes = {"step": ('["', '"]'), "approval": ('{"', '"}'), "gated": ('{{"', '"}}'), "compensation": ('(["', '"])')}
    for look in looks:
        left, right = shapes[look.kind]
        lines.append(
            f"    {_mermaid_id(look.id)}{left}{_mermaid_text(look.title)}<br/><small>{_mermaid_text(look.detail)}</small>{right}"
        )
    for edge in graph.edges():
        a, b = _mermaid_id(edge.source), _mermaid_id(edge.target)
        arrow = {"needs": "-->", "sequence": "-->", "finally": "==>|finally|", "compensates": "-.->|undo|"}[edge.kind]
        lines.append(f"    {a} {arrow} {b}")
    lines += [
        "    classDef high fill:#fde2e2,stroke:#c0392b,stroke-width:2px",
        "    classDef gate fill:#fff4d6,stroke:#b7791f",
        "    classDef undo fill:#eef2f7,stroke:#5a6b85,stroke-dasharray: 4 3",
    ]
    for cls, members in (
        ("high", [x for x in looks if x.risk == "high"]),
        ("gate", [x for x in looks if x.kind in ("approval", "gated") and x.risk != "high"]),
        ("undo", [x for x in looks if x.kind == "compensation"]),
    ):
        if members:
            lines.append(f"    class {','.join(_mermaid_id(m.id) for m in members)} {cls}")
    return "\n".join(lines) + "\n"


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(pack: Pack, playbook_name: str, policies: tuple[Policy, ...] = ()) -> str:
    looks, graph = _looks(pack, playbook_name, policies)
    name = _dot_string(f"{pack.metadata.name}/{playbook_name}")
    lines = [
        f"digraph {name} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded", fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for look in looks:
        attrs = {"label": f"{look.title}\n{look.detail}"}
        if look.kind == "approval":
            attrs.update(shape="diamond", style="filled", fillcolor="#fff4d6")
        elif look.kind == "gated":
            attrs.update(shape="hexagon", style="filled", fillcolor="#fff4d6")
        elif look.kind == "compensation":
            attrs.update(style="dashed,rounded", color="#5a6b85")
        if look.risk == "high":
            attrs.update(color="#c0392b", penwidth="2")
        rendered = ", ".join(f"{key}={_dot_string(value)}" for key, value in attrs.items())
        lines.append(f"    {_dot_string(look.id)} [{rendered}];")
    for edge in graph.edges():
        style = {
            "needs": "",
            "sequence": "",
            "finally": ' [style=bold, label="finally"]',
            "compensates": ' [style=dashed, label="undo"]',
        }[edge.kind]
        lines.append(f"    {_dot_string(edge.source)} -> {_dot_string(edge.target)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(pack: Pack, playbook_name: str, policies: tuple[Policy, ...] = ()) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise UsageError(
            "`--format svg` needs Graphviz's `dot` program; install Graphviz (e.g. apt-get install graphviz) or use --format dot"
        )
    done = subprocess.run(
        [dot, "-Tsvg"],
        input=to_dot(pack, playbook_name, policies),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise UsageError(f"Graphviz failed: {done.stderr.strip()}")
    return done.stdout


RENDERERS = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}


def draw(pack: Pack, playbook: str | None, fmt: str, policies: tuple[Policy, ...] = ()) -> str:
    names = [playbook] if playbook else sorted(pack.playbooks)
    unknown = [n for n in names if n not in pack.playbooks]
    if unknown:
        from opsdsl.lang.schema import did_you_mean

        hint = did_you_mean(unknown[0], sorted(pack.playbooks)) or f"playbooks: {', '.join(sorted(pack.playbooks))}"
        raise UsageError(f"pack `{pack.metadata.name}` has no playbook `{unknown[0]}` ({hint})")
    if fmt == "svg" and len(names) > 1:
        raise UsageError("`--format svg` draws one playbook; choose it with --playbook")
    return "".join(RENDERERS[fmt](pack, name, policies) for name in names)
