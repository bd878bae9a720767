"""The console's server-side drawings and Markdown, without a server: a DAG of hundreds of
steps (and a chain deeper than Python's recursion limit), hostile step ids, the report's
bars, and rca.md with HTML and script links in it."""

from __future__ import annotations

import re
import xml.dom.minidom

from opsdsl.runtime import board as B
from opsdsl.serve.console import draw
from opsdsl.serve.console.markdown import to_html


def chain(n: int) -> dict:
    nodes = [{"id": f"s{i}", "action": "shell", "section": "steps"} for i in range(n)]
    edges = [{"from": f"s{i}", "to": f"s{i + 1}", "kind": "needs"} for i in range(n - 1)]
    return {"nodes": nodes, "edges": edges}


def test_a_long_chain_is_laid_out_without_recursion():
    layers = draw.layers(**{k: v for k, v in chain(5000).items()})
    assert layers["s0"] == 0 and layers["s4999"] == 4999


def test_a_200_step_dag_is_well_formed_svg_with_every_status():
    playbook = chain(200)
    statuses = {f"s{i}": status for i, status in enumerate(draw.STATUS_LOOK)}
    svg = draw.dag_svg(playbook, statuses, "two hundred")
    xml.dom.minidom.parseString(svg)  # well-formed
    assert svg.count('<g class="node"') == 200
    for _fill, icon, word in draw.STATUS_LOOK.values():
        assert f'data-status="{word}"' in svg and icon in svg
    assert "style=" not in svg and "<script" not in svg


def test_fan_out_and_a_cycle_in_a_damaged_plan_still_draw():
    playbook = {
        "nodes": [{"id": i} for i in "abcd"],
        "edges": [{"from": "a", "to": x} for x in "bc"] + [{"from": "d", "to": "a"}, {"from": "a", "to": "d"}],
    }
    svg = draw.dag_svg(playbook, {"a": B.SUCCEEDED}, "t")
    xml.dom.minidom.parseString(svg)
    assert svg.count('<g class="node"') == 4


def test_hostile_step_ids_and_titles_are_escaped():
    playbook = {"nodes": [{"id": '"><script>alert(1)</script>', "action": "<img src=x onerror=alert(1)>"}], "edges": []}
    svg = draw.dag_svg(playbook, {}, "</title><script>alert(2)</script>")
    xml.dom.minidom.parseString(svg)
    assert "<script" not in svg and "<img" not in svg


def test_bars_say_met_or_missed_in_words_and_keep_inside_the_chart():
    svg = draw.bar_chart(
        "MTTA", [("SEV-1", 100.0, 300.0, ""), ("SEV-2", 5000.0, 900.0, ""), ("SEV-3", None, 3600.0, "")], "time", str
    )
    xml.dom.minidom.parseString(svg)
    assert "✓ met" in svg and "✗ missed" in svg and "no data" in svg
    widths = [float(w) for w in re.findall(r'<rect x="70" y="\d+" width="([\d.]+)" height="18" fill="#', svg)]
    assert widths and max(widths) <= 300


def test_rca_markdown_is_rendered_without_raw_html_or_script_links():
    html = to_html(
        "# RCA\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
        "[click](javascript:alert(1)) [ok](https://example.com/x) [data](data:text/html,<script>)\n\n"
        "| a | b |\n|---|---|\n| <b>1</b> | 2 |\n"
    )
    assert "<h1>RCA</h1>" in html and "<table>" in html
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert 'href="javascript:' not in html and 'href="data:' not in html
    assert 'href="https://example.com/x" rel="noopener noreferrer"' in html
