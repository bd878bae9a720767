"""rca.md as HTML for the incident page, safely.

markdown-it-py (CommonMark) with raw HTML off: a `<script>` or `<img onerror>` written into
the Markdown (run text reaches rca.md) comes out as text, and links keep only the schemes
markdown-it allows (no `javascript:`, `vbscript:`, `file:` or `data:` other than images;
images are not loaded anyway: the page's CSP allows only this server). Links open with
`rel="noopener noreferrer"`.
"""

from __future__ import annotations

from typing import Any

MAX_MARKDOWN = 2 * 1024 * 1024  # characters rendered; the rest is cut (the download has all of it)


def to_html(text: str) -> str:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.add_render_rule("link_open", _link_open)
    cut = len(text) > MAX_MARKDOWN
    html = md.render(text[:MAX_MARKDOWN])
    if cut:
        html += "<p><em>(cut here: rca.md is longer; download the export for all of it)</em></p>"
    return html


def _link_open(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer")
    return self.renderToken(tokens, idx, options, env)
