"""Live pages: Server-Sent Events telling an open page that its run's ledger moved.

One poller per server (not per page) reads the ledger's newest `seq` every `TICK` on the
API's reader threads — an indexed `MAX(seq)`, then the runs of the new entries — and
wakes the streams whose run (or, for the runs list, any run) has new entries. A stream
sends `event: changed` with the newest seq; the page (htmx's SSE extension) then fetches
its own live part again, the same server-rendered HTML as a reload.

A runs list (any run) is told at most every `LIST_EVERY` seconds, so a busy server does
not have every open list reloading twice a second. Bounds: `MAX_PER_PERSON` open streams per person (more is 429), a comment line every
`HEARTBEAT` seconds (proxies keep the connection; a dead peer is noticed; the session is
checked again, so a stream ends with its session), and every
stream ends within a tick once the server starts draining, so the drain, which waits for
requests in flight, never waits on a page left open. The poller stops when no page is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from opsdsl.runtime import store as S

log = logging.getLogger("opsdsl.serve")

TICK = 0.5  # seconds between looks at the ledger
HEARTBEAT = 15.0
MAX_PER_PERSON = 4  # a browser holds at most 6 connections per server over HTTP/1.1
LIST_EVERY = 2.0  # seconds between refreshes of a runs list (any run's entry moves it)
MAX_RUNS_PER_TICK = 2000  # distinct runs read from one tick's new entries


@dataclass(eq=False)
class Watcher:
    run: str | None  # None: any run (the runs list)
    seq: int
    moved: asyncio.Event = field(default_factory=asyncio.Event)


class Live:
    def __init__(self, console: Any) -> None:
        self.console = console
        self.watchers: set[Watcher] = set()
        self.open: Counter[str] = Counter()
        self.seq = 0
        self._poller: asyncio.Task | None = None
        self._closing = False

    async def stream(self, request: web.Request, person: Any, context: dict) -> web.StreamResponse:
        """GET /console/live[?run=ID][&since=SEQ]: `changed` events for one run, or for any.
        `since` is the ledger seq the page was rendered at: an entry that landed before the
        stream opened is told at once, not missed."""
        run = request.query.get("run") or None
        since_text = request.query.get("since", "")
        since = int(since_text) if since_text.isascii() and since_text.isdigit() and len(since_text) < 19 else None
        if run is not None:
            run = await self.console._resolve(request, run)  # as a page's run: full id, prefix or latest
        if self.open[person.name] >= MAX_PER_PERSON:
            return web.Response(
                status=429,
                text=f"at most {MAX_PER_PERSON} live pages per person; close one",
                headers={"Retry-After": "5"},
            )
        self.open[person.name] += 1
        try:
            return await self._serve(request, run, since)
        finally:
            self.open[person.name] -= 1
            if self.open[person.name] <= 0:
                del self.open[person.name]

    async def _serve(self, request: web.Request, run: str | None, since: int | None) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        if not self.watchers and self._poller is None:
            self.seq = await self.console.api.read(_newest_seq)
        watcher = Watcher(run, self.seq)
        self.watchers.add(watcher)
        self._ensure_poller()
        if since is not None:  # what moved between the page's rendering and this stream: tell at once
            newest, runs = await self.console.api.read(_moved_since, since)
            if newest > since and (run is None or runs is None or run in runs):
                watcher.seq = max(watcher.seq, newest)
                watcher.moved.set()
        beat = sent = time.monotonic()
        try:
            await response.write(b"retry: 2000\n: live\n\n")
            while not self._stopping():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.moved.wait(), TICK)
                if self._stopping():
                    break
                if watcher.moved.is_set() and watcher.run is None and time.monotonic() - sent < LIST_EVERY:
                    await asyncio.sleep(TICK)  # the runs list reloads at most every LIST_EVERY seconds
                    continue
                if watcher.moved.is_set():
                    watcher.moved.clear()
                    sent = time.monotonic()
                    await response.write(f"event: changed\ndata: {watcher.seq}\n\n".encode())
                    beat = time.monotonic()
                elif time.monotonic() - beat >= HEARTBEAT:
                    if not await self._still_signed_in(request):
                        break
                    await response.write(b": heartbeat\n\n")
                    beat = time.monotonic()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(watcher)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _still_signed_in(self, request: web.Request) -> bool:
        """Whether the stream's person is still signed in (session not expired, signed out or
        revoked), checked at each heartbeat: a stream does not outlive its session."""
        try:
            return await self.console.who(request) is not None
        except Exception:  # a proxy header that no longer names an allowed person, a busy database
            return False

    def _stopping(self) -> bool:
        return self._closing or bool(getattr(self.console.server, "stopping", False))

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="opsdsl-console-live")

    async def _poll(self) -> None:
        try:
            while self.watchers and not self._stopping():
                await asyncio.sleep(TICK)
                try:
                    newest, runs = await self.console.api.read(_moved_since, self.seq)
                except Exception as error:  # a busy database: try again next tick
                    log.warning("console: live poll: %s: %s", type(error).__name__, error)
                    continue
                if newest <= self.seq:
                    continue
                self.seq = newest
                for watcher in list(self.watchers):
                    if watcher.run is None or watcher.run in runs or runs is None:
                        watcher.seq = newest
                        watcher.moved.set()
        finally:
            self._poller = None

    async def shutdown(self, app: web.Application) -> None:
        self._closing = True
        for watcher in list(self.watchers):
            watcher.moved.set()
        if self._poller is not None:
            self._poller.cancel()


def _newest_seq(store: S.Store) -> int:
    row = store.conn.execute("SELECT MAX(seq) FROM ledger").fetchone()
    return int(row[0] or 0)


def _moved_since(store: S.Store, seq: int) -> tuple[int, set[str] | None]:
    """(the newest seq, the runs with entries after `seq`; None when too many to list)."""
    newest = _newest_seq(store)
    if newest <= seq:
        return newest, set()
    rows = store.conn.execute(
        "SELECT DISTINCT run FROM ledger WHERE seq > ? AND run IS NOT NULL LIMIT ?", (seq, MAX_RUNS_PER_TICK + 1)
    ).fetchall()
    if len(rows) > MAX_RUNS_PER_TICK:
        return newest, None
    return newest, {row[0] for row in rows}
