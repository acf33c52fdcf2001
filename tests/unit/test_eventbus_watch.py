"""In-process watchers of the event bus: called in publish order with no socket in between,
each for its own events, never after they are unwatched; a failing one takes nothing else
down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchboard.actors.eventbus import EventBus


async def test_watchers_get_their_events_in_order_until_unwatched() -> None:
    bus = EventBus()
    got: list[tuple[str, str, Any]] = []
    hold_only = bus.watch(["E_CALL_HOLD"], lambda e, p: got.append(("hold", e, p["n"])))
    both = bus.watch(["E_CALL_HOLD", "E_CALL_TRANSFER"],
                     lambda e, p: got.append(("both", e, p["n"])))

    def broken(event: str, params: dict[str, Any]) -> None:
        raise RuntimeError("a watcher's bug")

    bus.watch(["E_CALL_TRANSFER"], broken)
    bus.publish("E_CALL_TRANSFER", {"n": 1})
    bus.publish("E_CALL_HOLD", {"n": 2})
    bus.publish("E_DLG_STATE_CHANGED", {"n": 3})  # nobody watches it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    hold_only()
    bus.publish("E_CALL_HOLD", {"n": 4})
    await asyncio.sleep(0)
    bus.publish("E_CALL_HOLD", {"n": 5})
    # Once unwatched, never called again: not even for what was published before.
    both()
    await bus.close()
    assert got == [("both", "E_CALL_TRANSFER", 1), ("hold", "E_CALL_HOLD", 2),
                   ("both", "E_CALL_HOLD", 2), ("both", "E_CALL_HOLD", 4)]
    # Watchers are no subscriptions: `evi:subscribers` and the statistics do not show them.
    assert bus.subscriptions() == []
    assert bus.statistics()["evi:subscriptions"] == 0


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="E_NOPE"):
        EventBus().watch(["E_NOPE"], lambda e, p: None)
