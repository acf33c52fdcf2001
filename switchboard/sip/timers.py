"""A timer queue driven from outside: the driver asks `next_deadline()` and calls `run_due(now)`.

Nothing here reads a clock. Callbacks get the `now` the driver passed in.

Most timers of a proxy are long and cancelled before they fire: Timer B and F (32 s), timer C
(three minutes), a dialog's lifetime (hours), the Accepted wait (RFC 6026). A heap keeps a
cancelled entry until it reaches the top or the heap is rebuilt, and rebuilding a heap of
hundreds of thousands of entries stalls the loop for tens of milliseconds. So timers due
within `NEAR` seconds go into a heap, and later ones into a bucket per second (a dict, so a
cancel removes the entry at once); a bucket moves into the heap when its second comes near.
Cancelled entries in the heap are then at most `NEAR` seconds from leaving it by themselves.
A cancelled timer lets go of its callback at once, so what the callback refers to (a finished
transaction, a call's context) is freed by reference counting right away.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from itertools import count

TimerCallback = Callable[[float], None]

NEAR = 2.0  # seconds: timers due sooner go straight into the heap


def _noop(_now: float) -> None:
    return None


class Timer:
    __slots__ = ("bucket", "callback", "cancelled", "queue", "seq", "when")

    def __init__(self, when: float, seq: int, callback: TimerCallback, queue: TimerQueue
                 ) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False
        self.queue: TimerQueue | None = queue
        # The bucket of its second it waits in, while not in the heap.
        self.bucket: dict[Timer, None] | None = None

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _noop
            queue = self.queue
            if queue is not None:
                self.queue = None
                queue._forget(self)


class TimerQueue:
    __slots__ = ("_buckets", "_heap", "_keys", "_now", "_seq", "_size")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._now = -math.inf  # the latest `now` the driver gave (none yet: every timer is far)
        self._buckets: dict[int, dict[Timer, None]] = {}
        self._keys: list[int] = []  # heap of bucket seconds (stale ones skipped lazily)
        self._seq = count()
        self._size = 0  # live timers

    def call_at(self, when: float, callback: TimerCallback) -> Timer:
        timer = Timer(when, next(self._seq), callback, self)
        self._size += 1
        if when < self._now + NEAR:
            heapq.heappush(self._heap, (when, timer.seq, timer))
        else:
            # Far from the earliest deadline: wait in a bucket until it is near.
            second = math.floor(when)
            bucket = self._buckets.get(second)
            if bucket is None:
                bucket = self._buckets[second] = {}
                heapq.heappush(self._keys, second)
            bucket[timer] = None
            timer.bucket = bucket
        return timer

    def _forget(self, timer: Timer) -> None:
        self._size -= 1
        bucket = timer.bucket
        if bucket is None:
            return  # in the heap: dropped when it reaches the top, at most NEAR from now
        timer.bucket = None
        del bucket[timer]
        if not bucket:
            del self._buckets[math.floor(timer.when)]  # its key in `_keys` is skipped or goes
            self._compact_keys()

    def _compact_keys(self) -> None:
        """Rebuild `_keys` once most of it is seconds whose bucket went: a second emptied by
        cancels (timer C is armed and cancelled once per call) is pushed again by its next
        timer, and the seconds of the dialogs' lifetimes would wait hours to be skipped. So
        `_keys` stays within twice the buckets, and lets go of what the calls left."""
        if len(self._keys) > 2 * len(self._buckets):
            self._keys = list(self._buckets)
            heapq.heapify(self._keys)

    def _bring_near(self, horizon: float) -> None:
        """Move the buckets of seconds before `horizon` into the heap."""
        keys, buckets, heap = self._keys, self._buckets, self._heap
        while keys and keys[0] < horizon:
            second = heapq.heappop(keys)
            bucket = buckets.pop(second, None)
            if bucket is None:
                continue  # emptied by cancels
            for timer in bucket:
                timer.bucket = None
                heapq.heappush(heap, (timer.when, timer.seq, timer))
        self._compact_keys()

    def _top(self) -> float | None:
        """The earliest deadline in the heap, dropping cancelled entries on the way."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def next_deadline(self) -> float | None:
        top = self._top()
        keys, buckets = self._keys, self._buckets
        while keys and keys[0] not in buckets:
            heapq.heappop(keys)
        if not keys:
            return top
        # A bucket's timers are due no earlier than its second.
        if top is None or keys[0] < top:
            self._bring_near(keys[0] + 1)
            return self._top()
        return top

    def run_due(self, now: float) -> int:
        """Fire every timer due at `now`; returns how many fired."""
        fired = 0
        self._now = now
        self._bring_near(now + NEAR)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            callback = timer.callback
            timer.cancelled = True
            timer.callback = _noop
            timer.queue = None
            self._size -= 1
            fired += 1
            callback(now)
        return fired

    def __len__(self) -> int:
        return self._size
