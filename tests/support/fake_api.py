"""A fake node for the management interface: a `ControlApi` with canned dialogs and statistics
that records the calls it gets (dialogs ended, other operations, events subscribed), for the MI dispatcher's unit
tests and the MI HTTP server's integration tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from switchboard.actors.listing import user_of
from switchboard.api import CommandError, EventObserver, Unwatch
from switchboard.capture import CaptureSwitch
from switchboard.sip.operations import EndCall, Operation


class FakeApi:
    """A ControlApi with canned data that records the calls it gets."""

    def __init__(self, dialogs: list[dict[str, Any]], stats: dict[str, int], *, uptime: float,
                 started_at: float) -> None:
        self.dialogs = dialogs
        self.stats = stats
        self.uptime = uptime
        self.start = started_at
        self.ended: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self.operated: list[Operation] = []
        self.subscribed: list[tuple[str, str, int]] = []
        self.watchers: dict[int, tuple[frozenset[str], EventObserver]] = {}

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            d
            for d in self.dialogs
            if (callid is None or d["callid"] == callid)
            and (from_tag is None or d["caller_tag"] == from_tag)
        ]

    async def list_page(self, after: int | None, limit: int, state: int | None = None,
                        from_user: str | None = None, to_user: str | None = None
                        ) -> tuple[list[dict[str, Any]], int | None]:
        """The canned dialogs that match, by `db_id`, as a node pages them."""
        matching = sorted(
            (d for d in self.dialogs
             if (after is None or d["db_id"] > after)
             and (state is None or d["state"] == state)
             and (from_user is None or user_of(d["from_uri"]) == from_user)
             and (to_user is None or user_of(d["to_uri"]) == to_user)),
            key=lambda d: int(d["db_id"]))
        shown = matching[:limit]
        return shown, int(shown[-1]["db_id"]) if len(matching) > limit else None

    async def operate(self, op: Operation) -> None:
        key = op.key if isinstance(op, EndCall) else op.call_id
        if not any(key in (d["ID"], d["callid"]) for d in self.dialogs):
            raise CommandError.dialog_not_found()
        if isinstance(op, EndCall):
            self.ended.append((op.key, op.extra_headers))
        else:
            self.operated.append(op)

    async def statistics(self) -> dict[str, int]:
        return dict(self.stats)

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        self.subscribed.append((event, socket, expire))

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        key = self._next_watcher = getattr(self, "_next_watcher", 0) + 1
        self.watchers[key] = (frozenset(events), observer)

        async def unwatch() -> None:
            self.watchers.pop(key, None)

        return unwatch

    def watched(self) -> set[str]:
        """The events some watcher wants now."""
        return {e for events, _ in self.watchers.values() for e in events}

    def emit(self, event: str, **params: Any) -> None:
        """Raise `event`: every watcher of it gets it, as the node's event bus calls them."""
        for events, observer in list(self.watchers.values()):
            if event in events:
                observer(event, params)

    def capture(self) -> CaptureSwitch | None:
        return None

    def uptime_seconds(self) -> float:
        return self.uptime

    def started_at(self) -> float:
        return self.start
