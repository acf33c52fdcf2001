"""The node's events, in this process: what the tracker follows and the SSE stream shows.

The feed watches the node's events through `ControlApi.watch`: the runtime calls it in this
process (the `local` runtime from its event bus, with no socket another process could write
events into). Each event goes to the tracker first (which says which operation it belongs
to), then to every stream client's bounded queue: a client that does not keep up loses
events, it never holds up the others or the node.

Events are watched when first needed (the REST API's first operation, the first stream
client), so a node nobody asks over REST publishes exactly what it did before; the call
operations' events stay watched from then on, the dialog state changes (four per call) only
while a stream client listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from switchboard.api import ControlApi, Unwatch
from switchboard.events import E_CALL_HOLD, E_CALL_TRANSFER, KNOWN_EVENTS

from .tracker import OperationTracker

log = logging.getLogger(__name__)

TRACKED_EVENTS: Final = (E_CALL_TRANSFER, E_CALL_HOLD)
CLIENT_QUEUE: Final = 1024


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
                 clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._tracker = tracker
        self._clock = clock
        self._watching: dict[str, Unwatch] = {}
        self._lock = asyncio.Lock()
        self._listeners: set[Listener] = set()
        self._seq = 0
        self._closed = False

    async def need(self, events: Iterable[str]) -> None:
        """Make sure `events` are watched (in force when this returns)."""
        wanted = [e for e in events if e not in self._watching]
        if not wanted:
            return
        async with self._lock:
            if self._closed:
                raise RuntimeError("the event feed is closed")
            for event in wanted:
                if event not in self._watching:
                    self._watching[event] = await self._api.watch([event], self.deliver)

    async def listen(self, events: Iterable[str] = KNOWN_EVENTS) -> Listener:
        """A new stream client, for `events` (watched first)."""
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
            for event in [e for e in self._watching if e not in TRACKED_EVENTS]:
                with contextlib.suppress(Exception):
                    await self._watching.pop(event)()

    def watching(self) -> frozenset[str]:
        """The events watched now."""
        return frozenset(self._watching)

    def deliver(self, event: str, params: dict[str, Any]) -> None:
        """Hand one event to the tracker and every stream client."""
        now = self._clock()
        operation = self._tracker.observe(event, params, now)
        self._seq += 1
        item = FeedEvent(self._seq, now, event, params, operation)
        for listener in list(self._listeners):
            listener.offer(item)

    def end_streams(self) -> None:
        """Tell every stream client's response to finish (the server is shutting down)."""
        for listener in self._listeners:
            listener.end()

    async def close(self) -> None:
        """Stop watching."""
        self._closed = True
        self.end_streams()
        async with self._lock:
            for event in list(self._watching):
                with contextlib.suppress(Exception):
                    await self._watching.pop(event)()
