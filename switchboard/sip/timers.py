"""A timer queue driven from outside: the driver asks `next_deadline()` and calls `run_due(now)`.

Nothing here reads a clock. Callbacks get the `now` the driver passed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count

TimerCallback = Callable[[float], None]


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: TimerCallback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = count()

    def call_at(self, when: float, callback: TimerCallback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Fire every timer due at `now`; returns how many fired."""
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True
            fired += 1
            timer.callback(now)
        return fired

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)
