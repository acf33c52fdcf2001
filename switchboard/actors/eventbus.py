"""EventBus: the pub/sub actor that delivers events to their subscribers.

Everything that changes the bus goes through its mailbox and is handled one message at a time
by a single asyncio task, so `publish` costs the caller one enqueue and never blocks, and a
subscription made with `await subscribe(...)` is in force for every event published after it.
The bus owns the subscription table and one sink per subscribed socket or webhook URL
(shared by all events sent to it), and counts what its sinks did not deliver, closed ones
included. Code of this process may watch events too (`watch`): its callable is called from
the bus's task, in publish order, with no socket in between. Which events anybody takes (a
subscription or a watcher) is worked out once per change, not per event (`wanted`), so that
whoever publishes can skip making the events nobody takes (`follow_wanted`). It does not know
what the events mean or who raises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from switchboard.config import EventsConfig
from switchboard.events import KNOWN_EVENTS
from switchboard.events.envelope import encode_event, encode_webhook
from switchboard.events.sinks import Sink, SinkAddress, open_sink, parse_sink
from switchboard.events.subscriptions import Subscription, SubscriptionTable
from switchboard.events.webhooks import (
    WEBHOOK_STATISTICS,
    Backoff,
    WebhookSettings,
    WebhookSink,
)

log = logging.getLogger(__name__)

# `observer(event, params)`: an in-process watcher; `params` is shared with the other
# watchers of the event and must not be changed.
EventObserver = Callable[[str, dict[str, Any]], None]

# OpenSIPS evi:subscribe default.
DEFAULT_EXPIRE: Final = 3600


def webhook_settings(config: EventsConfig) -> WebhookSettings | None:
    """The webhook settings of `[events]`; None without a secret (webhooks are refused)."""
    if not config.webhook_secret:
        return None
    return WebhookSettings(
        secret=config.webhook_secret.encode(),
        timeout=float(config.webhook_timeout),
        backoff=Backoff(retries=config.webhook_retries),
        queue_size=config.webhook_queue,
    )


@dataclass(frozen=True, slots=True)
class _Publish:
    event: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Subscribe:
    event: str
    address: SinkAddress
    expire: int | None
    done: asyncio.Future[None]


class _Stop:
    pass


_Message = _Publish | _Subscribe | _Stop


class EventBus:
    """Publish/subscribe for E_* events toward `udp:`/`tcp:` sinks and webhooks.

    `clock` gives the time subscriptions expire by (monotonic seconds); `webhook` is what
    webhook sinks sign with and how they retry (None: webhooks are refused); `sink_factory`
    opens a sink for an address (tests may pass their own).
    """

    def __init__(
        self,
        *,
        events: Iterable[str] = KNOWN_EVENTS,
        clock: Callable[[], float] = time.monotonic,
        mailbox_size: int = 65536,
        webhook: WebhookSettings | None = None,
        sink_factory: Callable[[SinkAddress], Awaitable[Sink]] | None = None,
    ) -> None:
        self._events = frozenset(events)
        self._clock = clock
        self._webhook = webhook
        self._sink_factory = sink_factory or functools.partial(open_sink, webhook=webhook)
        self._mailbox: asyncio.Queue[_Message] = asyncio.Queue(maxsize=mailbox_size)
        self._table = SubscriptionTable()
        self._sinks: dict[str, Sink] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Events dropped because the mailbox was full or the bus closed.
        self.dropped = 0
        # The counters of the sinks closed so far, so that the statistics never go back.
        self._retired: dict[str, int] = {}
        # In-process watchers by the id `watch` gave them, and how many watch each event.
        self._watchers: dict[int, tuple[frozenset[str], EventObserver]] = {}
        self._watched: dict[str, int] = {}
        self._next_watcher = 0
        # The events some subscription or watcher takes, and who is told when that changes.
        self._wanted: frozenset[str] = frozenset()
        self._followers: list[Callable[[frozenset[str]], None]] = []

    @property
    def events(self) -> frozenset[str]:
        return self._events

    @property
    def wanted(self) -> frozenset[str]:
        """The events some subscription or watcher takes: from the moment `subscribe` or
        `watch` returns, and until the bus has seen the last of them go (a subscription that
        expired is noticed at the next event)."""
        return self._wanted

    def follow_wanted(self, changed: Callable[[frozenset[str]], None]) -> None:
        """Call `changed(wanted)` now and each time `wanted` changes, before the change
        takes effect for the caller of `subscribe` or `watch`."""
        self._followers.append(changed)
        changed(self._wanted)

    def _refresh_wanted(self) -> None:
        wanted = self._table.events().union(self._watched)
        if wanted != self._wanted:
            self._wanted = wanted
            for changed in self._followers:
                changed(wanted)

    def publish(self, event: str, params: Mapping[str, Any]) -> None:
        """Queue `event` for every current subscriber. Never blocks, never raises."""
        if self._closed:
            self.dropped += 1
            log.debug("event bus closed: dropped %s", event)
            return
        if event not in self._wanted:
            # Nobody listens (the common case: four state changes per call): queueing it
            # would only wake the bus task to find no subscriber. A subscription counts
            # from the moment `subscribe` returns, so nothing it was promised is lost.
            return
        try:
            # A copy: the caller may reuse its dict once we return.
            self._mailbox.put_nowait(_Publish(event, dict(params)))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event bus mailbox full: dropped %s", event)
            return
        self._ensure_running()

    async def subscribe(self, event: str, socket: str, expire: int | None = DEFAULT_EXPIRE) -> None:
        """Subscribe `socket` to `event` for `expire` seconds (0 removes, None = static).

        Raises ValueError for an unknown event, a bad socket string or a negative expire, and
        OSError when the sink cannot be opened. Returns once the subscription is in force.
        """
        if event not in self._events:
            known = ", ".join(sorted(self._events))
            raise ValueError(f"unknown event {event!r} (known: {known})")
        address = parse_sink(socket)
        if expire is not None and expire < 0:
            raise ValueError(f"negative expire value {expire}")
        if address.webhook and self._webhook is None and expire != 0:
            raise ValueError(f"{address}: webhooks need [events] webhook_secret")
        if self._closed:
            raise RuntimeError("event bus is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Subscriptions are rare and must not be lost: wait for room rather than drop.
        await self._mailbox.put(_Subscribe(event, address, expire, done))
        self._ensure_running()
        await done

    def watch(self, events: Iterable[str], observer: EventObserver) -> Callable[[], None]:
        """Call `observer(event, params)` for each of `events` published from now on, in
        publish order, and never after the returned callable was called. It runs in the
        bus's task: it must return quickly; what it raises is logged. Raises ValueError for
        an unknown event."""
        wanted = frozenset(events)
        unknown = wanted - self._events
        if unknown:
            raise ValueError(f"unknown event {sorted(unknown)[0]!r}")
        if self._closed:
            raise RuntimeError("event bus is closed")
        key = self._next_watcher
        self._next_watcher += 1
        self._watchers[key] = (wanted, observer)
        for event in wanted:
            self._watched[event] = self._watched.get(event, 0) + 1
        self._refresh_wanted()

        def unwatch() -> None:
            gone = self._watchers.pop(key, None)
            for event in gone[0] if gone is not None else ():
                self._watched[event] -= 1
                if not self._watched[event]:
                    del self._watched[event]
            self._refresh_wanted()

        return unwatch

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions in force now (a snapshot)."""
        now = self._clock()
        return [s for s in self._table if s.alive(now)]

    def statistics(self) -> dict[str, int]:
        """`evi:dropped_events` (the bus's and every sink's), `evi:subscriptions`, and the
        webhook counters summed over the webhook sinks (`WEBHOOK_STATISTICS`)."""
        totals = dict(self._retired)
        for sink in self._sinks.values():
            for name, count in _counts(sink).items():
                totals[name] = totals.get(name, 0) + count
        stats = {"evi:dropped_events": self.dropped + totals.pop("dropped", 0),
                 "evi:subscriptions": len(self.subscriptions())}
        stats.update({name: totals.get(name, 0) for name in WEBHOOK_STATISTICS})
        return stats

    async def close(self) -> None:
        """Deliver what is already queued, then stop and close every sink."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            try:
                self._mailbox.put_nowait(_Stop())
            except asyncio.QueueFull:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._mailbox.empty():
            msg = self._mailbox.get_nowait()
            if isinstance(msg, _Subscribe) and not msg.done.done():
                msg.done.set_exception(RuntimeError("event bus is closed"))
        self._watchers.clear()
        self._watched.clear()
        sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            await self._close_sink(sink)

    def _ensure_running(self) -> None:
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop yet (a sync caller): the task starts with the first call made in one.
            return
        self._task = loop.create_task(self._run(), name="event-bus")

    async def _run(self) -> None:
        while True:
            msg = await self._mailbox.get()
            if isinstance(msg, _Stop):
                return
            try:
                if isinstance(msg, _Publish):
                    await self._deliver(msg)
                else:
                    await self._apply(msg)
            except Exception as exc:  # one bad message must not stop the bus
                log.exception("event bus: failed to handle %r", msg)
                if isinstance(msg, _Subscribe) and not msg.done.done():
                    msg.done.set_exception(exc)

    async def _deliver(self, msg: _Publish) -> None:
        if msg.event in self._watched:
            for events, observer in list(self._watchers.values()):
                if msg.event in events:
                    try:
                        observer(msg.event, msg.params)
                    except Exception:  # a watcher must not take the sinks down with it
                        log.exception("event watcher %r failed on %s", observer, msg.event)
        now = self._clock()
        if self._table.expire(now):
            self._refresh_wanted()
            await self._release_unused()
        sockets = self._table.sockets_for(msg.event, now)
        if not sockets:
            return
        payloads: dict[bool, bytes] = {}
        for socket in sockets:
            sink = self._sinks.get(socket)
            if sink is None:
                continue
            webhook = sink.address.webhook
            if webhook not in payloads:
                try:
                    payloads[webhook] = (
                        encode_webhook(msg.event, msg.params, uuid.uuid4().hex) if webhook
                        else encode_event(msg.event, msg.params))
                except (TypeError, ValueError) as exc:
                    log.error("event bus: cannot encode %s: %s", msg.event, exc)
                    return
            try:
                sink.send(payloads[webhook])
            except Exception:  # a sink must not take the others down with it
                log.exception("event sink %s: send failed", socket)

    async def _apply(self, msg: _Subscribe) -> None:
        now = self._clock()
        socket = str(msg.address)
        sub = self._table.subscribe(msg.event, socket, msg.expire, now)
        self._refresh_wanted()
        if sub is not None and socket not in self._sinks:
            try:
                self._sinks[socket] = await self._sink_factory(msg.address)
            except Exception as exc:
                self._table.remove(msg.event, socket)
                self._refresh_wanted()
                log.warning("event sink %s: cannot open: %s", socket, exc)
                if not msg.done.done():
                    msg.done.set_exception(exc)
                return
        self._table.expire(now)
        self._refresh_wanted()
        await self._release_unused()
        if not msg.done.done():
            msg.done.set_result(None)

    async def _release_unused(self) -> None:
        used = self._table.sockets()
        for socket in [s for s in self._sinks if s not in used]:
            await self._close_sink(self._sinks.pop(socket))

    async def _close_sink(self, sink: Sink) -> None:
        try:
            await sink.close()
        except Exception:
            log.exception("event sink %s: close failed", sink.address)
        for name, count in _counts(sink).items():
            self._retired[name] = self._retired.get(name, 0) + count


def _counts(sink: Sink) -> dict[str, int]:
    """A sink's counters: "dropped", and a webhook's statistics."""
    counts = {"dropped": sink.dropped}
    if isinstance(sink, WebhookSink):
        counts.update(sink.counts())
    return counts
