"""`ControlApi.watch` for the driver of the `ray` runtime: the controller's events reach the
driver's process through a relay actor.

The controller cannot call into the driver (the driver is no actor), so the driver starts an
`EventRelay` actor when first asked to watch and subscribes it to the controller as a Python
subscriber (`Controller.subscribe` with its handle: `on_events` gets the events in batches,
in the order they were raised). One task of the driver asks the relay for what came
(`take`, which answers as soon as something did, or after a second) and hands each event to
the observers of its name, in order. No socket: only what holds the relay's handle can give
it events, and the controller may run on any node. Subscriptions are renewed before they
expire and removed with the last observer of their event; a relay that dies is replaced and
subscribed again (the events in between are lost, and counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import ray
import ray.exceptions

from ...api import EventObserver, Unwatch

log = logging.getLogger(__package__)

SUBSCRIPTION_SECONDS: Final = 600
RENEW_EVERY: Final = 240.0
TAKE_WAIT: Final = 1.0  # seconds a `take` waits for events before it answers none
MAX_HELD: Final = 65536  # events a relay holds for a driver that does not take them

# `subscribe(event, target, expire)`: the controller's `subscribe`, with the relay's handle.
Subscribe = Callable[[str, Any, int], Awaitable[None]]


class EventRelay:
    """The relay actor: the events the controller sent it, until the driver takes them (at
    most `MAX_HELD`: the oldest are dropped, and counted, when the driver does not keep up)."""

    def __init__(self) -> None:
        self._held: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._lost = 0
        self._arrived = asyncio.Event()

    async def on_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self._held.extend((str(event), params) for event, params in events)
        while len(self._held) > MAX_HELD:
            self._held.popleft()
            self._lost += 1
        self._arrived.set()

    async def take(self, wait: float) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """(events, lost since the last take): as soon as there are events, or after `wait`
        seconds with none."""
        if not self._held:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)
        events = list(self._held)
        self._held.clear()
        lost, self._lost = self._lost, 0
        return events, lost


class RelayWatch:
    def __init__(self, subscribe: Subscribe) -> None:
        self._subscribe = subscribe
        self._relay: Any = None
        self._observers: dict[int, tuple[frozenset[str], EventObserver]] = {}
        self._next = 0
        self._subscribed: set[str] = set()
        self._lock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self.lost = 0

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        wanted = frozenset(events)
        async with self._lock:
            if self._closed:
                raise RuntimeError("the event watch is closed")
            if self._relay is None:
                self._relay = _start_relay()
            for event in sorted(wanted - self._subscribed):
                await self._subscribe(event, self._relay, SUBSCRIPTION_SECONDS)
                self._subscribed.add(event)
            key = self._next
            self._next += 1
            self._observers[key] = (wanted, observer)
            loop = asyncio.get_running_loop()
            if self._pump is None:
                self._pump = loop.create_task(self._take(), name="ray-event-watch")
            if self._renewer is None:
                self._renewer = loop.create_task(self._renew(), name="ray-event-watch-renew")

        async def unwatch() -> None:
            async with self._lock:
                if self._observers.pop(key, None) is None or self._relay is None:
                    return
                still = {e for events, _ in self._observers.values() for e in events}
                for event in sorted(self._subscribed - still):
                    self._subscribed.discard(event)
                    with contextlib.suppress(Exception):
                        await self._subscribe(event, self._relay, 0)

        return unwatch

    async def _take(self) -> None:
        while True:
            relay = self._relay
            try:
                events, lost = await relay.take.remote(TAKE_WAIT)
            except ray.exceptions.RayActorError as exc:
                log.warning("the event relay is gone (%s): starting another", exc)
                await self._replace(relay)
                continue
            except Exception:  # the task must outlive any surprise, or the watch goes silent
                log.exception("event watch: taking events from the relay failed")
                await asyncio.sleep(TAKE_WAIT)
                continue
            if lost:
                self.lost += lost
                log.warning("event watch: %d events lost (the driver did not keep up)", lost)
            for event, params in events:
                self._deliver(event, params)

    async def _replace(self, dead: Any) -> None:
        async with self._lock:
            if self._relay is not dead or self._closed:
                return
            self._relay = _start_relay()
            for event in sorted(self._subscribed):
                try:
                    await self._subscribe(event, self._relay, SUBSCRIPTION_SECONDS)
                except Exception:
                    log.exception("subscribing the new event relay to %s", event)
        await asyncio.sleep(0.5)  # a cluster that keeps killing it is not spun against

    def _deliver(self, event: str, params: dict[str, Any]) -> None:
        for events, observer in list(self._observers.values()):
            if event in events:
                try:
                    observer(event, params)
                except Exception:
                    log.exception("event watcher %r failed on %s", observer, event)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            async with self._lock:
                for event in list(self._subscribed):
                    try:
                        await self._subscribe(event, self._relay, SUBSCRIPTION_SECONDS)
                    except Exception:
                        log.exception("renewing the event watch's subscription to %s", event)

    async def close(self) -> None:
        """Unsubscribe, stop the relay."""
        async with self._lock:
            self._closed = True
            for task in (self._pump, self._renewer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._pump = self._renewer = None
            if self._relay is not None:
                for event in sorted(self._subscribed):
                    with contextlib.suppress(Exception):
                        await self._subscribe(event, self._relay, 0)
                with contextlib.suppress(Exception):
                    ray.kill(self._relay)
                self._relay = None
            self._subscribed.clear()
            self._observers.clear()


def _start_relay() -> Any:
    remote_relay: Any = ray.remote(EventRelay)
    # No CPU of its own: it only holds events between two calls.
    return remote_relay.options(num_cpus=0, max_restarts=0).remote()
