"""Pictures the console draws on the server, as SVG text: a run's DAG and the report's charts.

No script, no `style` attribute (the page's Content-Security-Policy forbids inline
styles): presentation attributes only, every text escaped. The DAG is laid out here
from the compiled plan the run carries (its `nodes` and `edges`), in layers by longest
path, so it needs no Graphviz (`opsdsl graph --format svg` does) and costs
milliseconds for hundreds of steps. Node kinds follow `opsdsl graph`
(`opsdsl.build.drawing`): an approval gate, a high-risk step, a compensation.

Status colours are the Okabe-Ito palette, each with an icon and a word, so nothing is
told by colour alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape as _xml

from opsdsl.runtime import board as B

# status → (fill, icon, word)
STATUS_LOOK: dict[str, tuple[str, str, str]] = {
    B.PENDING: ("#ffffff", "○", "pending"),
    B.RUNNING: ("#56b4e9", "▶", "running"),
    B.SUCCEEDED: ("#009e73", "✓", "succeeded"),
    B.FAILED: ("#d55e00", "✗", "failed"),
    B.SKIPPED: ("#bbbbbb", "⤼", "skipped"),
    B.AWAITING: ("#e69f00", "‖", "awaiting approval"),
    B.IN_DOUBT: ("#cc79a7", "?", "in doubt"),
    B.INTERRUPTED: ("#f0e442", "■", "interrupted"),
}
RUN_LOOK: dict[str, tuple[str, str]] = {  # run status → (css class, icon)
    "running": ("running", "▶"),
    "paused": ("paused", "‖"),
    "succeeded": ("succeeded", "✓"),
    "failed": ("failed", "✗"),
    "refused": ("refused", "⊘"),
    "cancelled": ("cancelled", "■"),
    "interrupted": ("interrupted", "■"),
}
STEP_CLASS = {
    B.PENDING: "pending",
    B.RUNNING: "running",
    B.SUCCEEDED: "succeeded",
    B.FAILED: "failed",
    B.SKIPPED: "skipped",
    B.AWAITING: "awaiting",
    B.IN_DOUBT: "doubt",
    B.INTERRUPTED: "interrupted",
}

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 200, 48, 24, 34, 12
LABEL = 24  # characters of a step id shown in its box (the whole id is its tooltip)


def _text(value: Any, limit: int | None = None) -> str:
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _xml(text, {'"': "&quot;"})


def layers(nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Each node's layer: the longest path to it from a node without predecessors."""
    ids = [str(node.get("id")) for node in nodes]
    known = set(ids)
    preds: dict[str, list[str]] = {sid: [] for sid in ids}
    for edge in edges:
        a, b = str(edge.get("from")), str(edge.get("to"))
        if a in known and b in known and a != b:
            preds[b].append(a)
    layer: dict[str, int] = {}
    for sid in ids:
        if sid not in layer:
            _depth_iteratively(sid, preds, layer)
    return layer


def _depth_iteratively(start: str, preds: Mapping[str, list[str]], layer: dict[str, int]) -> None:
    """Fill `layer` for `start` and its ancestors without deep recursion (long chains of steps)."""
    stack: list[tuple[str, bool]] = [(start, False)]
    on_path: set[str] = set()
    while stack:
        sid, expanded = stack.pop()
        if sid in layer:
            continue
        if expanded:
            on_path.discard(sid)
            layer[sid] = 1 + max((layer.get(p, 0) for p in preds[sid] if p in layer), default=-1)
            continue
        on_path.add(sid)
        stack.append((sid, True))
        for p in preds[sid]:
            if p not in layer and p not in on_path:
                stack.append((p, False))


def dag_svg(plan_playbook: Mapping[str, Any], statuses: Mapping[str, str], title: str) -> str:
    """The playbook's DAG, each node filled by its live status (`statuses`: step id → board status)."""
    nodes = [node for node in plan_playbook.get("nodes", []) if isinstance(node, Mapping) and "id" in node]
    edges = [edge for edge in plan_playbook.get("edges", []) if isinstance(edge, Mapping)]
    if not nodes:
        return ""
    layer = layers(nodes, edges)
    rows: dict[int, list[str]] = {}
    for node in nodes:
        rows.setdefault(layer[str(node["id"])], []).append(str(node["id"]))
    widest = max(len(row) for row in rows.values())
    width = PAD * 2 + widest * NODE_W + (widest - 1) * GAP_X
    height = PAD * 2 + len(rows) * NODE_H + (len(rows) - 1) * GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for depth, row in sorted(rows.items()):
        used = len(row) * NODE_W + (len(row) - 1) * GAP_X
        x0 = (width - used) / 2
        for i, sid in enumerate(row):
            where[sid] = (x0 + i * (NODE_W + GAP_X), PAD + depth * (NODE_H + GAP_Y))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
        f' viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{_text(title)}" font-size="12"'
        ' font-family="DejaVu Sans, sans-serif">',
        f"<title>{_text(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"'
        ' orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#57606a"/></marker></defs>',
    ]
    for edge in edges:
        a, b = str(edge.get("from")), str(edge.get("to"))
        if a not in where or b not in where:
            continue
        (ax, ay), (bx, by) = where[a], where[b]
        dashed = ' stroke-dasharray="5 4"' if edge.get("kind") == "compensates" else ""
        x1, y1 = ax + NODE_W / 2, ay + NODE_H
        x2, y2 = bx + NODE_W / 2, by
        if by <= ay:  # same or earlier layer: from the side
            x1, y1, x2, y2 = ax + NODE_W, ay + NODE_H / 2, bx, by + NODE_H / 2
        out.append(
            f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#57606a"'
            f' stroke-width="1.4"{dashed} marker-end="url(#arrow)"/>'
        )
    for node in nodes:
        sid = str(node["id"])
        x, y = where[sid]
        status = statuses.get(sid, B.PENDING)
        fill, icon, word = STATUS_LOOK.get(status, ("#ffffff", "•", str(status)))
        action = str(node.get("action") or "")
        section = str(node.get("section") or "steps")
        risk = str(node.get("risk") or "low")
        kind = "compensation" if section == "compensation" else "approval" if action == "approval" else "step"
        stroke_width = "3" if risk == "high" else "1.5"
        dash = ' stroke-dasharray="6 3"' if kind == "compensation" else ""
        tip = f"{sid} · {action} · {word}" + (f" · risk {risk}" if risk != "low" else "")
        out.append(f'<g class="node" data-step="{_text(sid)}" data-status="{_text(word)}"><title>{_text(tip)}</title>')
        out.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="{14 if kind == "approval" else 5}"'
            f' fill="{fill}" stroke="#1b1f24" stroke-width="{stroke_width}"{dash}/>'
        )
        if kind == "approval":  # a gate: a second border
            out.append(
                f'<rect x="{x + 3:.0f}" y="{y + 3:.0f}" width="{NODE_W - 6}" height="{NODE_H - 6}" rx="11"'
                ' fill="none" stroke="#1b1f24" stroke-width="1"/>'
            )
        out.append(f'<text x="{x + 10:.0f}" y="{y + 19:.0f}" font-weight="bold" fill="#000">{_text(sid, LABEL)}</text>')
        extra = " · gate" if kind == "approval" else " · undo" if kind == "compensation" else ""
        extra += " · HIGH" if risk == "high" else ""
        out.append(
            f'<text x="{x + 10:.0f}" y="{y + 37:.0f}" fill="#000">{_text(icon + " " + word + extra, 30)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


# ---- the report ---------------------------------------------------------------------------

MET, MISSED, NONE = "#0072b2", "#d55e00", "#bbbbbb"


def bar_chart(
    title: str,
    rows: Sequence[tuple[str, float | None, float | None, str]],
    unit: str,
    show: Any,
) -> str:
    """Horizontal bars, one per row `(label, value, target or None, caption)`. A row with a
    time target is drawn to its own scale with the target (a dashed tick) half-way, so left
    of the tick meets it; a bar is blue when it meets its target, vermillion when it misses
    it (and says so in words, with the value), grey when there is no target. Rates run
    0-100 %; times without a target share one scale."""
    label_w, bar_w, row_h, top = 70, 300, 34, 30
    free = max([v for _, v, t, _ in rows if v is not None and t is None] + [1e-9]) * 1.1
    height = top + row_h * len(rows) + 10
    width = label_w + bar_w + 250
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="{_text(title)}" font-size="13" font-family="DejaVu Sans, sans-serif">',
        f"<title>{_text(title)}</title>",
        f'<text x="0" y="18" font-weight="bold" fill="#1b1f24">{_text(title)}</text>',
    ]
    for i, (label, value, target, caption) in enumerate(rows):
        y = top + i * row_h
        # Each bar on its own scale, its target half-way: severities' targets differ a
        # thousandfold (5 min to a day), and one scale would leave most bars invisible.
        scale = 1.0 if unit == "rate" else 2 * target if target else free
        out.append(f'<text x="0" y="{y + 17}" fill="#1b1f24">{_text(label)}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="18" fill="#f6f8fa" stroke="#d0d7de"/>')
        if value is not None:
            met = None if target is None else _meets(value, target, unit)
            colour = NONE if met is None else MET if met else MISSED
            length = min(bar_w, max(2.0, bar_w * value / scale))
            out.append(f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="18" fill="{colour}"/>')
        if target is not None:
            tx = label_w + bar_w * target / scale
            out.append(
                f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + 26}" stroke="#1b1f24" stroke-width="2"'
                ' stroke-dasharray="3 2"/>'
            )
        words = "no data" if value is None else show(value)
        if value is not None and target is not None:
            words += " ✓ met" if _meets(value, target, unit) else " ✗ missed"
        if target is not None:
            words += f" (target {'≥' if unit == 'rate' else '<'} {show(target)})"
        out.append(f'<text x="{label_w + bar_w + 8}" y="{y + 12}" fill="#1b1f24">{_text(words)}</text>')
        if caption:
            out.append(
                f'<text x="{label_w + bar_w + 8}" y="{y + 27}" fill="#57606a" font-size="11">{_text(caption, 32)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _meets(value: float, target: float, unit: str) -> bool:
    """Times meet a target below it; rates at or above it (the seed's section-12 table)."""
    return value >= target if unit == "rate" else value < target
