"""The core's events on their way out of the worker: made into their published form (name and
parameters) only when somebody takes them, counted by the call metrics either way; and the
event bus telling what is taken, once per change of subscriptions and watchers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchboard.actors.eventbus import EventBus
from switchboard.actors.worker import Worker
from switchboard.events import E_CALL_HOLD, E_CALL_TRANSFER, E_DLG_STATE_CHANGED
from switchboard.events.opensips import event_name, opensips_event
from switchboard.events.sinks import SinkAddress
from switchboard.metrics import CallMetrics
from switchboard.sip import Request, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.dialog import DialogState, DialogStateChanged
from switchboard.sip.events import (
    HoldAnswered,
    HoldStarted,
    TransferEnded,
    TransferNotified,
    TransferStarted,
)
from switchboard.sip.proxy import Event, Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.endpoint import RecordingEndpoint
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    BOB_CONTACT,
    OUR_RR,
    PROXY_UDP,
    SDP,
    ack_for_2xx,
    counter,
    invite,
    reply,
    sip_request,
)

Published = list[tuple[str, dict[str, Any]]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A worker around a real core, its publish and its count recorded, the call metrics
    counting from the count."""

    def __init__(self) -> None:
        self.proxy = Proxy(ProxyConfig(listeners=(PROXY_UDP,), record_route=True), counter())
        self.published: Published = []
        self.counted: list[Event] = []
        # The core's clock is the loop's; `later` moves the metrics' view of it ahead.
        self.later = 0.0
        loop = asyncio.get_running_loop()
        self.metrics = CallMetrics(self._start_time_of, lambda: loop.time() + self.later)

        def count(event: Event) -> None:
            self.counted.append(event)
            self.metrics.count(event)

        self.worker = Worker(self.proxy, CallOps(self.proxy),
                             lambda name, params: self.published.append((name, params)),
                             count=count)
        self.endpoint = RecordingEndpoint(PROXY_UDP)
        self.worker.add_endpoint(self.endpoint)

    def _start_time_of(self, dialog_id: str) -> float | None:
        dialog = self.proxy.dialogs.by_id(dialog_id)
        return dialog.start_time if dialog is not None else None

    def last_to(self, dest: Address) -> Request:
        data = next(d for d, to in reversed(self.endpoint.sent) if to == dest)
        msg = parse_message(data)
        assert isinstance(msg, Request)
        return msg

    def call(self) -> None:
        """Alice calls Bob, Bob rings and answers 1.5 s after the INVITE, Alice hangs up."""
        receive = self.worker.receive
        receive(invite(), ALICE, PROXY_UDP)
        at_bob = self.last_to(BOB)
        receive(reply(at_bob, 180), BOB, PROXY_UDP)
        self.later += 1.5
        receive(reply(at_bob, 200, body=SDP), BOB, PROXY_UDP)
        receive(ack_for_2xx(), ALICE, PROXY_UDP)
        receive(sip_request("BYE", BOB_CONTACT, branch="z9hG4bKa-bye", to_tag="bob-tag",
                            cseq=2, routes=[OUR_RR], contact=None), ALICE, PROXY_UDP)
        receive(reply(self.last_to(BOB), 200, to_tag=None, contact=None), BOB, PROXY_UDP)


STATES = [(DialogState.UNCONFIRMED, DialogState.EARLY),
          (DialogState.EARLY, DialogState.CONFIRMED_NA),
          (DialogState.CONFIRMED_NA, DialogState.CONFIRMED),
          (DialogState.CONFIRMED, DialogState.DELETED)]


async def test_with_nobody_taking_events_none_is_made_and_the_metrics_still_count() -> None:
    rig = Rig()
    rig.worker.wanted = frozenset()
    rig.call()
    assert rig.published == []
    changes = [(e.old_state, e.new_state) for e in rig.counted
               if isinstance(e, DialogStateChanged)]
    assert changes == STATES
    setup = rig.metrics.setup
    assert setup.count == 1 and setup.counts[setup.buckets.index(2.5)] == 1
    assert setup.total == pytest.approx(1.5, abs=0.25)
    rig.worker.close()


async def test_what_is_taken_is_published_as_it_was_and_the_rest_is_not() -> None:
    everything, only_dialogs = Rig(), Rig()
    only_dialogs.worker.wanted = frozenset({E_DLG_STATE_CHANGED})
    for rig in (everything, only_dialogs):
        rig.call()
        # The outcomes of a transfer and a hold, raised as the call operations raise them.
        rig.proxy.events += [
            TransferStarted("c", "caller", "t", "sip:carol@x"),
            TransferNotified("c", "caller", "t", "100 Trying"),
            TransferEnded("c", "caller", "t", "sip:carol@x", True, "200 OK"),
            HoldStarted("c", "callee", "hold"),
            HoldAnswered("c", "callee", "hold", False, "488 Not Here"),
        ]
        rig.worker.flush()
    # No `wanted` (a runtime that does not say): every event, made as before.
    assert everything.published == [opensips_event(e) for e in everything.counted]
    assert [name for name, _ in everything.published] == (
        [E_DLG_STATE_CHANGED] * 4 + [E_CALL_TRANSFER] * 3 + [E_CALL_HOLD] * 2)
    # Only the dialog events are taken: those, with the very same parameters.
    assert only_dialogs.published == everything.published[:4]
    assert [(p["old_state"], p["new_state"]) for _, p in only_dialogs.published] == STATES
    for rig in (everything, only_dialogs):
        assert rig.metrics.statistics() == {
            "callops:transfer_ok": 1, "callops:transfer_fail": 0,
            "callops:hold_ok": 0, "callops:hold_fail": 1,
            "callops:unhold_ok": 0, "callops:unhold_fail": 0,
        }
        assert rig.metrics.setup.count == 1
        rig.worker.close()


async def test_a_dialog_actor_goes_with_its_dialog_whether_or_not_published() -> None:
    rig = Rig()
    rig.worker.wanted = frozenset()
    rig.worker.receive(invite(), ALICE, PROXY_UDP)
    (dialog,) = list(rig.proxy.dialogs)
    rig.worker.actors[dialog.id] = object()  # type: ignore[assignment]
    rig.worker.receive(reply(rig.last_to(BOB), 486), BOB, PROXY_UDP)
    assert dialog.id not in rig.worker.actors
    rig.worker.close()


def test_event_name_is_the_published_name() -> None:
    events: list[Event] = [
        DialogStateChanged("1.2", "c", "a", "b", DialogState.EARLY, DialogState.CONFIRMED),
        TransferStarted("c", "caller", "t", "d"), HoldStarted("c", "caller", "hold"),
        HoldAnswered("c", "caller", "unhold", True),
        TransferEnded("c", "caller", "t", "d", False, "486 Busy Here"),
    ]
    assert [event_name(e) for e in events] == [opensips_event(e)[0] for e in events]


class NullSink:
    def __init__(self, address: SinkAddress) -> None:
        self.address = address
        self.dropped = 0

    def send(self, payload: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def open_null(address: SinkAddress) -> NullSink:
    return NullSink(address)


async def test_the_bus_says_what_is_taken_at_each_change() -> None:
    clock = Clock()
    bus = EventBus(clock=clock, sink_factory=open_null)
    seen: list[frozenset[str]] = []
    bus.follow_wanted(seen.append)
    assert seen == [frozenset()] and bus.wanted == frozenset()

    await bus.subscribe(E_CALL_HOLD, "udp:127.0.0.1:9", 10)
    assert bus.wanted == {E_CALL_HOLD}  # in force once subscribe returns
    unwatch = bus.watch([E_DLG_STATE_CHANGED, E_CALL_HOLD], lambda e, p: None)
    assert bus.wanted == {E_CALL_HOLD, E_DLG_STATE_CHANGED}
    await bus.subscribe(E_CALL_HOLD, "udp:127.0.0.1:9", 20)  # renewed: nothing changes
    unwatch()
    assert bus.wanted == {E_CALL_HOLD}
    await bus.subscribe(E_CALL_TRANSFER, "udp:127.0.0.1:9", None)  # static
    await bus.subscribe(E_CALL_HOLD, "udp:127.0.0.1:9", 0)
    assert bus.wanted == {E_CALL_TRANSFER}
    assert seen == [frozenset(), {E_CALL_HOLD}, {E_CALL_HOLD, E_DLG_STATE_CHANGED},
                    {E_CALL_HOLD}, {E_CALL_HOLD, E_CALL_TRANSFER}, {E_CALL_TRANSFER}]
    await bus.close()


async def test_an_expired_subscription_stops_being_taken_at_the_next_event() -> None:
    clock = Clock()
    bus = EventBus(clock=clock, sink_factory=open_null)
    await bus.subscribe(E_CALL_HOLD, "udp:127.0.0.1:9", 10)
    clock.now = 10.0
    assert bus.wanted == {E_CALL_HOLD}  # nobody has looked since
    bus.publish(E_CALL_HOLD, {"n": 1})
    for _ in range(5):
        await asyncio.sleep(0)
    assert bus.wanted == frozenset() and bus.subscriptions() == []
    bus.publish(E_CALL_HOLD, {"n": 2})
    assert bus._mailbox.empty()  # not queued: nobody takes it
    await bus.close()


async def test_a_sink_that_cannot_be_opened_takes_nothing() -> None:
    async def refuse(address: SinkAddress) -> NullSink:
        raise OSError("no route")

    bus = EventBus(sink_factory=refuse)
    with pytest.raises(OSError, match="no route"):
        await bus.subscribe(E_CALL_HOLD, "udp:127.0.0.1:9", 10)
    assert bus.wanted == frozenset()
    await bus.close()
