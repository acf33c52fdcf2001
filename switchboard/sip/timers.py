"""A timer queue driven from outside: the driver asks `next_deadline()` and calls `run_due(now)`.

Nothing here reads a clock. Callbacks get the `now` the driver passed in.

A cancelled timer lets go of its callback at once, so what the callback refers to (a
finished transaction, a call's context) is freed by reference counting instead of waiting in
the heap until the deadline — timer C waits three minutes. The heap itself is compacted when
cancelled entries outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count

TimerCallback = Callable[[float], None]


def _noop(_now: float) -> None:
    return None


class Timer:
    __slots__ = ("callback", "cancelled", "queue", "when")

    def __init__(self, when: float, callback: TimerCallback, queue: TimerQueue) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.queue: TimerQueue | None = queue

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _noop
            queue = self.queue
            if queue is not None:
                self.queue = None
                queue._cancelled += 1


class TimerQueue:
    __slots__ = ("_cancelled", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = count()
        self._cancelled = 0

    def call_at(self, when: float, callback: TimerCallback) -> Timer:
        timer = Timer(when, callback, self)
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), timer))
        if self._cancelled > 1024 and self._cancelled * 2 > len(heap):
            self._compact()
        return timer

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Fire every timer due at `now`; returns how many fired."""
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            callback = timer.callback
            timer.cancelled = True
            timer.callback = _noop
            timer.queue = None
            fired += 1
            callback(now)
            heap = self._heap  # a callback may have compacted it
        return fired

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled
