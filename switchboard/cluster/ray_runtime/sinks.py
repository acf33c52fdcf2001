"""Python subscribers of the `ray` runtime's events: an actor handle or a callable given to
`Controller.subscribe` in place of a socket string (docs/ray.md).

Owns how such a subscriber is named (so that subscribing it again renews its subscription)
and how events reach it, in order and in batches, from the controller's loop; the socket
subscribers stay with the `EventBus`. Knows nothing of workers or dialogs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Any, Final

import ray
import ray.actor
import ray.exceptions

from .context import MAX_PENDING_EVENTS

# The runtime logs under one name, its package's (what a log filter names).
log = logging.getLogger(__package__)

# The method a subscribed actor handle is called with: `on_events(events)`, a list of
# (event, params) pairs in the order they were raised.
ACTOR_SINK_METHOD: Final = "on_events"


def _sink_key(sink: Any) -> str:
    """What names a Python subscriber, so that subscribing it again renews (or, with expire
    0, removes) its subscription: the actor's id, or the callable's qualified name."""
    if isinstance(sink, ray.actor.ActorHandle):
        actor_id = getattr(sink, "_actor_id", None)
        return f"actor:{actor_id.hex() if actor_id is not None else id(sink)}"
    if isinstance(sink, functools.partial):
        return f"{_sink_key(sink.func)}{sink.args!r}{sorted(sink.keywords.items())!r}"
    name = getattr(sink, "__qualname__", None) or type(sink).__qualname__
    return f"python:{getattr(sink, '__module__', None) or '?'}.{name}"


class _PythonSink:
    """A Python subscriber: an actor handle, called `on_events(events)` with a list of
    (event, params) pairs, or a callable, called `sink(event, params)` in the controller's
    loop (an awaitable it returns is awaited before the next event). Events go in order, one
    batch at a time: what comes while a batch is on its way rides in the next one."""

    def __init__(self, key: str, target: Any) -> None:
        self.key = key
        self.target = target
        self.expiry: dict[str, float] = {}  # event -> time.monotonic() deadline
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.sending = False
        self.gone = False
        self.dropped = 0

    def events(self, now: float) -> list[str]:
        return [e for e, deadline in self.expiry.items() if deadline > now]

    def push(self, event: str, params: dict[str, Any]) -> None:
        if len(self.pending) >= MAX_PENDING_EVENTS:
            self.dropped += 1
            return
        self.pending.append((event, dict(params)))
        if not self.sending:
            self.sending = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending and not self.gone:
                batch, self.pending = self.pending, []
                try:
                    await self._deliver(batch)
                except ray.exceptions.RayActorError as exc:
                    # The subscriber is gone for good: so is its subscription.
                    self.gone = True
                    self.dropped += len(batch) + len(self.pending)
                    self.pending = []
                    log.warning("event subscriber %s is gone: %s", self.key, exc)
                except Exception:
                    self.dropped += len(batch)
                    log.exception("event subscriber %s failed", self.key)
        finally:
            self.sending = False

    async def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if isinstance(self.target, ray.actor.ActorHandle):
            await getattr(self.target, ACTOR_SINK_METHOD).remote(batch)
            return
        for event, params in batch:
            try:
                result = self.target(event, params)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.dropped += 1
                log.exception("event subscriber %s failed on %s", self.key, event)



class PythonSinks:
    """The Python subscribers of a controller, by `_sink_key`: the same one subscribed again
    renews its subscription, `expire` 0 removes it (as `evi:subscribe` does a socket's)."""

    __slots__ = ("_sinks",)

    def __init__(self) -> None:
        self._sinks: dict[str, _PythonSink] = {}

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def subscribe(self, event: str, target: Any, expire: int) -> None:
        key = _sink_key(target)
        sink = self._sinks.get(key)
        if expire == 0:
            if sink is not None:
                sink.expiry.pop(event, None)
                if not sink.expiry:
                    del self._sinks[key]
            return
        if sink is None or sink.gone:
            sink = self._sinks[key] = _PythonSink(key, target)
        sink.target = target  # the latest one (a callable subscribed again may be new)
        sink.expiry[event] = time.monotonic() + expire

    def publish(self, event: str, params: dict[str, Any]) -> None:
        """Hand `event` to every subscriber of it; forget those gone or expired."""
        now = time.monotonic()
        for key, sink in list(self._sinks.items()):
            if sink.gone or not sink.events(now):
                del self._sinks[key]
            elif sink.expiry.get(event, 0.0) > now:
                sink.push(event, params)

    def wanted(self, now: float) -> frozenset[str]:
        """The events some live subscriber wants at `now` (time.monotonic())."""
        return frozenset(e for s in self._sinks.values() if not s.gone for e in s.events(now))

    def dropped(self) -> int:
        """Events the subscribers did not get (queue full, a subscriber failed or gone)."""
        return sum(s.dropped for s in self._sinks.values())

    def subscriptions(self, now: float) -> int:
        """Live (subscriber, event) subscriptions at `now` (time.monotonic())."""
        return sum(len(s.events(now)) for s in self._sinks.values())

    def kept(self, now: float, wall: float) -> list[tuple[str, Any, float]]:
        """Every live subscription as (event, subscriber, wall time it expires at): what a
        restarted controller subscribes again (`now` is time.monotonic(), `wall`
        time.time())."""
        return [(event, sink.target, wall + deadline - now)
                for sink in self._sinks.values() if not sink.gone
                for event, deadline in sink.expiry.items() if deadline > now]

    def clear(self) -> None:
        self._sinks.clear()
