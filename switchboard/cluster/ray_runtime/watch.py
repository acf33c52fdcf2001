"""`ControlApi.watch` for the driver of the `ray` runtime: the controller's events reach the
driver's process through a `tcp:` socket the driver listens on, on loopback.

The controller's event bus cannot call into the driver (the driver is no actor), so this
subscribes one socket of its own through `subscribe_event`, as `evi:subscribe` would, reads
the newline-delimited JSON-RPC notifications the bus writes there and hands each to the
observers of its event, in order. Subscriptions are renewed before they expire and removed
with the last observer of their event. Unlike the `local` runtime's in-process watch, another
process of the driver's host could connect to that socket too: it listens on 127.0.0.1 only,
so the controller must run on the driver's node (one-node clusters).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from ...api import EventObserver, Unwatch

log = logging.getLogger(__package__)

SUBSCRIPTION_SECONDS: Final = 600
RENEW_EVERY: Final = 240.0
MAX_LINE: Final = 1 << 20

# `subscribe(event, socket, expire)`: the controller's `subscribe_event`.
Subscribe = Callable[[str, str, int], Awaitable[None]]


class LoopbackWatch:
    def __init__(self, subscribe: Subscribe, host: str = "127.0.0.1") -> None:
        self._subscribe = subscribe
        self._host = host
        self._server: asyncio.Server | None = None
        self._socket: str | None = None
        self._observers: dict[int, tuple[frozenset[str], EventObserver]] = {}
        self._next = 0
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        wanted = frozenset(events)
        async with self._lock:
            if self._closed:
                raise RuntimeError("the event watch is closed")
            socket = await self._listen()
            for event in sorted(wanted - self._subscribed):
                await self._subscribe(event, socket, SUBSCRIPTION_SECONDS)
                self._subscribed.add(event)
            key = self._next
            self._next += 1
            self._observers[key] = (wanted, observer)
            if self._renewer is None:
                self._renewer = asyncio.get_running_loop().create_task(
                    self._renew(), name="ray-event-watch-renew")

        async def unwatch() -> None:
            async with self._lock:
                if self._observers.pop(key, None) is None or self._socket is None:
                    return
                still = {e for events, _ in self._observers.values() for e in events}
                for event in sorted(self._subscribed - still):
                    self._subscribed.discard(event)
                    with contextlib.suppress(Exception):
                        await self._subscribe(event, self._socket, 0)

        return unwatch

    async def _listen(self) -> str:
        if self._socket is None:
            self._server = await asyncio.start_server(self._accept, self._host, 0,
                                                      limit=MAX_LINE)
            port = self._server.sockets[0].getsockname()[1]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._socket = f"tcp:{host}:{port}"
        return self._socket

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            async with self._lock:
                for event in list(self._subscribed):
                    if self._socket is None:
                        break
                    try:
                        await self._subscribe(event, self._socket, SUBSCRIPTION_SECONDS)
                    except Exception:
                        log.exception("renewing the event watch's subscription to %s", event)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, OSError):  # a line over MAX_LINE, or the bus went away
                    break
                if not line:
                    break
                self._take(line)
        finally:
            writer.close()
            self._writers.discard(writer)

    def _take(self, line: bytes) -> None:
        try:
            note: Any = json.loads(line)
        except ValueError:
            log.warning("event watch: not JSON: %r", line[:200])
            return
        if not isinstance(note, dict):
            return
        event, params = note.get("method"), note.get("params")
        if not isinstance(event, str) or not isinstance(params, dict):
            return
        for events, observer in list(self._observers.values()):
            if event in events:
                try:
                    observer(event, params)
                except Exception:
                    log.exception("event watcher %r failed on %s", observer, event)

    async def close(self) -> None:
        """Unsubscribe, stop listening."""
        async with self._lock:
            self._closed = True
            if self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewer
            if self._socket is not None:
                for event in sorted(self._subscribed):
                    with contextlib.suppress(Exception):
                        await self._subscribe(event, self._socket, 0)
            self._subscribed.clear()
            self._observers.clear()
            if self._server is not None:
                self._server.close()
                for writer in list(self._writers):
                    writer.close()
                with contextlib.suppress(Exception):
                    await self._server.wait_closed()
