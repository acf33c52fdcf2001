"""The node's events, in this process: what the tracker follows and the SSE stream shows.

The feed subscribes itself through `ControlApi.subscribe_event` — the way `evi:subscribe`
does, so it works the same in every runtime — with a `tcp:` socket on loopback that it
listens on itself, and reads the newline-delimited JSON-RPC notifications the event bus
writes there. Each event goes to the tracker first (which says which operation it belongs
to), then to every stream client's bounded queue: a client that does not keep up loses
events, it never holds up the others or the node.

Subscriptions are made when first needed (the REST API's first operation, the first stream
client), so a node nobody asks over REST publishes exactly what it did before; the call
operations' events stay subscribed from then on, the dialog state changes (four per call)
only while a stream client listens. They are renewed before they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from switchboard.api import ControlApi
from switchboard.events import E_CALL_HOLD, E_CALL_TRANSFER, KNOWN_EVENTS

from .tracker import OperationTracker

log = logging.getLogger(__name__)

TRACKED_EVENTS: Final = (E_CALL_TRANSFER, E_CALL_HOLD)
SUBSCRIPTION_SECONDS: Final = 600
RENEW_EVERY: Final = 240.0
CLIENT_QUEUE: Final = 1024
MAX_LINE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event as the stream gives it: `seq` counts events the feed received."""

    seq: int
    at: float
    event: str
    params: dict[str, Any]
    operation: str | None

    def view(self) -> dict[str, Any]:
        return {"event": self.event, "at": self.at, "operation": self.operation,
                "params": self.params}


class Listener:
    """A stream client's queue; `lost` counts events it missed because it was full."""

    def __init__(self, size: int = CLIENT_QUEUE) -> None:
        # None: the server shuts down, the stream ends instead of holding the shutdown up.
        self.queue: asyncio.Queue[FeedEvent | None] = asyncio.Queue(maxsize=size)
        self.lost = 0

    def end(self) -> None:
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    def offer(self, item: FeedEvent) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost += 1


class EventFeed:
    def __init__(self, api: ControlApi, tracker: OperationTracker, *,
                 host: str = "127.0.0.1", clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._tracker = tracker
        self._host = host
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._socket: str | None = None
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._listeners: set[Listener] = set()
        self._seq = 0
        self._closed = False

    @property
    def socket(self) -> str | None:
        return self._socket

    async def need(self, events: Iterable[str]) -> None:
        """Make sure `events` are subscribed (in force when this returns)."""
        wanted = [e for e in events if e not in self._subscribed]
        if not wanted:
            return
        async with self._lock:
            if self._closed:
                raise RuntimeError("the event feed is closed")
            socket = await self._listen()
            for event in wanted:
                if event not in self._subscribed:
                    await self._api.subscribe_event(event, socket, SUBSCRIPTION_SECONDS)
                    self._subscribed.add(event)
            if self._renewer is None:
                self._renewer = asyncio.get_running_loop().create_task(
                    self._renew(), name="rest-event-feed-renew")

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
                socket = self._socket
                for event in list(self._subscribed):
                    if socket is None:
                        break
                    try:
                        await self._api.subscribe_event(event, socket, SUBSCRIPTION_SECONDS)
                    except Exception:
                        log.exception("renewing the REST event subscription to %s", event)

    async def listen(self, events: Iterable[str] = KNOWN_EVENTS) -> Listener:
        """A new stream client, for `events` (subscribed first)."""
        wanted = list(events)
        await self.need(wanted)
        listener = Listener()
        self._listeners.add(listener)
        return listener

    async def leave(self, listener: Listener) -> None:
        """A stream client went away; the dialog state changes stop when the last one has."""
        self._listeners.discard(listener)
        if self._listeners or self._closed:
            return
        async with self._lock:
            gone = [e for e in self._subscribed if e not in TRACKED_EVENTS]
            for event in gone:
                self._subscribed.discard(event)
                if self._socket is not None:
                    with contextlib.suppress(Exception):
                        await self._api.subscribe_event(event, self._socket, 0)

    def deliver(self, event: str, params: dict[str, Any]) -> FeedEvent:
        """Hand one event to the tracker and every stream client."""
        now = self._clock()
        operation = self._tracker.observe(event, params, now)
        self._seq += 1
        item = FeedEvent(self._seq, now, event, params, operation)
        for listener in list(self._listeners):
            listener.offer(item)
        return item

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
            note = json.loads(line)
        except ValueError:
            log.warning("REST event feed: not JSON: %r", line[:200])
            return
        if not isinstance(note, dict):
            return
        method, params = note.get("method"), note.get("params")
        if isinstance(method, str) and isinstance(params, dict):
            self.deliver(method, params)

    def end_streams(self) -> None:
        """Tell every stream client's response to finish (the server is shutting down)."""
        for listener in self._listeners:
            listener.end()

    async def close(self) -> None:
        """Unsubscribe, stop listening."""
        self._closed = True
        self.end_streams()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._socket is not None:
            for event in list(self._subscribed):
                with contextlib.suppress(Exception):
                    await self._api.subscribe_event(event, self._socket, 0)
        self._subscribed.clear()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
