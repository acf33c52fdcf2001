"""`ControlApi.capture` for the driver of the `ray` runtime: the console's message capture,
kept by each worker of its own traffic (a call's messages all pass through the worker that
record-routed it) and reached through the controller.

Turning it on or off leases or stops every worker's `CaptureSwitch` at once; a call's
messages are asked of the worker the controller last found that Call-ID on, or of every
worker for a call it has not located (or one that ended). The view sums the workers' (a
node of N workers holds up to N times one worker's calls).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# `ask(ref)`: the driver's call of a controller method (its errors made `CommandError`s).
Ask = Callable[[Any], Awaitable[Any]]


def merged_view(views: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of the workers' captures: on while every worker's is, until the first lease
    runs out, their calls and bounds added up."""
    enabled = bool(views) and all(v["enabled"] for v in views)
    untils = [v["until"] for v in views]
    return {
        "enabled": enabled,
        "until": min(untils) if enabled and None not in untils else None,
        "calls": sum(int(v["calls"]) for v in views),
        "max_calls": sum(int(v["max_calls"]) for v in views),
        "max_messages": max((int(v["max_messages"]) for v in views), default=0),
    }


class WorkersCapture:
    """`CaptureControl` over the controller's `capture` and `captured`."""

    def __init__(self, controller: Any, ask: Ask) -> None:
        self._controller = controller
        self._ask = ask

    async def enable(self, on: bool) -> dict[str, Any]:
        return merged_view(await self._ask(self._controller.capture.remote(on)))

    async def state(self) -> dict[str, Any]:
        return merged_view(await self._ask(self._controller.capture.remote(None)))

    async def call_messages(self, call_id: str) -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] | None = await self._ask(
            self._controller.captured.remote(call_id))
        return found
