"""What keeps `opsdsl serve` standing when its clients are hostile: connection deadlines,
a per-peer cap on connections that have not authenticated, and rate-limited logging.

1. A connection must deliver a request's complete headers within `header_timeout` of
   opening, or of its previous request finishing; else it is closed. A deadline, not an
   idle timer: a client trickling a byte a second is cut off like a silent one.
2. A peer (IP address) may hold `per_peer` connections that have not yet made an
   authenticated request; one more is answered 503 and closed at once.
3. Each log message (by its format string) prints at most `burst` lines per `window`
   seconds; the rest are counted and summed up in one "N more suppressed" line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

_BUSY = b'{"error": "too many connections from this peer"}'
REFUSED_CONNECTION = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class ConnectionGuard:
    """Deadlines and the per-peer cap over the connections of one aiohttp server."""

    def __init__(self, header_timeout: float, per_peer: int, on_refused: Callable[[str, str], None]) -> None:
        self.header_timeout = header_timeout
        self.per_peer = per_peer
        self.on_refused = on_refused  # (reason, peer)
        self.unauthenticated: Counter[str] = Counter()  # peer → its connections not authenticated yet
        self._peer: dict[Any, str] = {}  # connection (aiohttp's RequestHandler) → peer, while counted
        self._deadline: dict[Any, asyncio.TimerHandle] = {}

    def attach(self, server: web.Server) -> None:
        """Watch every connection `server` opens and closes (its protocol factory's hooks)."""
        opened, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            opened(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self.closed(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def opened(self, handler: Any, transport: asyncio.Transport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        if self.unauthenticated[peer] >= self.per_peer:
            self.on_refused("per-peer", peer)
            transport.write(REFUSED_CONNECTION)
            transport.close()
            return
        self.unauthenticated[peer] += 1
        self._peer[handler] = peer
        self._arm(handler)

    def closed(self, handler: Any) -> None:
        self._disarm(handler)
        self._uncount(handler)

    def request_started(self, handler: Any) -> None:
        """The request's headers are in: the header deadline no longer applies."""
        self._disarm(handler)

    def request_finished(self, handler: Any) -> None:
        """The next request on this connection has its own header deadline."""
        if handler.transport is not None:
            self._arm(handler)

    def authenticated(self, handler: Any) -> None:
        """This connection made an authenticated request: it no longer counts against its peer."""
        self._uncount(handler)

    def _arm(self, handler: Any) -> None:
        self._disarm(handler)
        loop = asyncio.get_running_loop()
        self._deadline[handler] = loop.call_later(self.header_timeout, self._expired, handler)

    def _disarm(self, handler: Any) -> None:
        timer = self._deadline.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expired(self, handler: Any) -> None:
        self._deadline.pop(handler, None)
        transport = handler.transport
        if transport is None:
            return
        peername = transport.get_extra_info("peername")
        self.on_refused("header-timeout", str(peername[0]) if isinstance(peername, tuple) else str(peername))
        transport.abort()

    def _uncount(self, handler: Any) -> None:
        peer = self._peer.pop(handler, None)
        if peer is not None:
            self.unauthenticated[peer] -= 1
            if not self.unauthenticated[peer]:
                del self.unauthenticated[peer]


class LogLimiter(logging.Filter):
    """Lets `burst` records of each message format through per `window` seconds; counts the rest."""

    def __init__(self, burst: int = 20, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._slots: dict[tuple[str, int, str], list[Any]] = {}  # key → [window start, passed, suppressed, last]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        slot = self._slots.get(key)
        if slot is not None and now - slot[0] >= self.window:
            self._summarise(key, slot)
            slot = None
        if slot is None:
            slot = self._slots[key] = [now, 0, 0, None]
        if slot[1] < self.burst:
            slot[1] += 1
            return True
        slot[2] += 1
        slot[3] = record
        return False

    def flush(self, everything: bool = False) -> None:
        """Log the summaries of windows that ended (of all windows, at shutdown)."""
        now = self.clock()
        for key, slot in list(self._slots.items()):
            if everything or now - slot[0] >= self.window:
                self._summarise(key, slot)
                del self._slots[key]

    def _summarise(self, key: tuple[str, int, str], slot: list[Any]) -> None:
        suppressed, last = slot[2], slot[3]
        if not suppressed:
            return
        slot[2] = 0
        message = last.getMessage()[:300]
        logging.getLogger(key[0]).log(
            key[1],
            "%d more suppressed in %.0f s, like: %s",
            suppressed,
            max(self.clock() - slot[0], 0),
            message,
            extra={"summary": True},
        )
