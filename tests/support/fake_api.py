"""A fake node for the management interface: a `ControlApi` with canned dialogs and statistics
that records the calls it gets (dialogs ended, events subscribed), for the MI dispatcher's unit
tests and the MI HTTP server's integration tests."""

from __future__ import annotations

from typing import Any

from switchboard.api import CommandError


class FakeApi:
    """A ControlApi with canned data that records the calls it gets."""

    def __init__(self, dialogs: list[dict[str, Any]], stats: dict[str, int], *, uptime: float,
                 started_at: float) -> None:
        self.dialogs = dialogs
        self.stats = stats
        self.uptime = uptime
        self.start = started_at
        self.ended: list[tuple[str, str | None]] = []
        self.subscribed: list[tuple[str, str, int]] = []

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            d
            for d in self.dialogs
            if (callid is None or d["callid"] == callid)
            and (from_tag is None or d["caller_tag"] == from_tag)
        ]

    async def end_dialog(self, dialog_id: str, extra_headers: str | None = None) -> None:
        if not any(dialog_id in (d["ID"], d["callid"]) for d in self.dialogs):
            raise CommandError.dialog_not_found()
        self.ended.append((dialog_id, extra_headers))

    async def statistics(self) -> dict[str, int]:
        return dict(self.stats)

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        self.subscribed.append((event, socket, expire))

    def uptime_seconds(self) -> float:
        return self.uptime

    def started_at(self) -> float:
        return self.start
