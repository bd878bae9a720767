"""The web console: `opsdsl serve`'s pages for people, under `/console/` (docs/console.md).

Server-rendered Jinja2 (autoescaped) over the same code the operator API runs
(`opsdsl.serve.api`): the same reader and writer threads, the same role checks
(`people.allowed` through `serve.auth.require`), the same change handlers, so the console
and the API cannot disagree about a rule. Every page works without JavaScript; htmx and
its SSE extension (vendored in `static/`, pinned and hashed in `static/VENDORED.json`)
only refresh a page's live part when the ledger moves.

Imported by `intake.Server.application()` only, so other CLI commands never load Jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from opsdsl.serve.intake import Server


def add_routes(app: web.Application, server: Server) -> None:
    """Mount the console on the server's application, beside the operator API it uses."""
    from opsdsl.serve.api import Api
    from opsdsl.serve.console.views import Console

    api = next((m.__self__ for m in app.middlewares if isinstance(getattr(m, "__self__", None), Api)), None)
    if api is None:
        raise RuntimeError("the console needs the operator API: mount api.add_routes first")
    Console(server, api).mount(app)
