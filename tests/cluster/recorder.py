"""`EventRecorder`, an actor-handle event subscriber for the Ray suite.

A module of its own that imports nothing of the test machinery: Ray imports it by name in the
actor's process (`tests.cluster.recorder`, found through the PYTHONPATH the suite gives Ray).
"""

from __future__ import annotations

from typing import Any


class EventRecorder:
    """An actor-handle subscriber (create it with `ray.remote(EventRecorder)`): the controller
    calls `on_events` with lists of (event, params) pairs; `events()` answers them all."""

    def __init__(self) -> None:
        self._events: list[tuple[str, dict[str, Any]]] = []

    def on_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self._events.extend(events)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self._events)
