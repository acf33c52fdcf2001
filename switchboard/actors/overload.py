"""Overload control for one worker: admit only as many new calls as it can carry.

Four times a second it looks at two signs — the share of a CPU the process used since the last
look, and how late the loop ran this check (a loop busy with a backlog runs timers late). While
either is high, the share of new INVITEs refused with 503 + Retry-After grows step by step
(bigger steps the later the loop runs: a sudden surge must be cut before its backlog turns
into retransmissions); otherwise it shrinks again (a quarter step near the line, a step
below it, halving when the load is far below), so the worker settles near its capacity
instead of refusing everything or nothing, and recovers by itself when the load drops.
Calls already up are never refused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INTERVAL = 0.25
STEP = 0.1
MAX_STEPS = 5.0
# The garbage collector runs from here (automatic collection is off, `cluster/local.py`):
# the youngest generation every YOUNG_EVERY seconds, a full collection when the worker is
# idle, at most every IDLE_COLLECT_EVERY. A young collection walks every container made since
# the last one that is still alive (transactions waiting out their timers): at 1,500 calls/s
# one every 0.25 s took 10-16 ms, the p99 of call setup; every 50 ms it is a fifth of that,
# for the same total work.
YOUNG_EVERY = 0.05
IDLE_COLLECT_EVERY = 300.0
IDLE_CPU = 0.2


class OverloadMonitor:
    def __init__(self, set_shed_fraction: Callable[[float], None], *, cpu_high: float = 0.97,
                 cpu_low: float = 0.85, lag_high: float = 0.15, lag_low: float = 0.05) -> None:
        self._set = set_shed_fraction
        self.cpu_high, self.cpu_low = cpu_high, cpu_low
        self.lag_high, self.lag_low = lag_high, lag_low
        self.shed = 0.0  # share of new calls refused
        self._strikes = 0  # consecutive high readings: one GC pause is not an overload
        self.cpu = 0.0
        self.lag = 0.0
        self._loop = asyncio.get_running_loop()
        self._last_cpu = time.process_time()
        self._last_wall = self._loop.time()
        self._last_collect = self._last_wall
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last_wall + INTERVAL, self._check, self._last_wall + INTERVAL)
        self._young: asyncio.TimerHandle | None = self._loop.call_later(
            YOUNG_EVERY, self._collect_young)

    def _collect_young(self) -> None:
        if not gc.isenabled():
            gc.collect(0)  # what the last 50 ms made and still holds
        self._young = self._loop.call_later(YOUNG_EVERY, self._collect_young)

    @property
    def overloaded(self) -> bool:
        return self.shed > 0.0

    def _check(self, due: float) -> None:
        now = self._loop.time()
        cpu_now = time.process_time()
        elapsed = max(now - self._last_wall, 1e-6)
        self.cpu = (cpu_now - self._last_cpu) / elapsed
        self.lag = now - due
        self._last_cpu, self._last_wall = cpu_now, now
        self.update(self.cpu, self.lag)
        if (self.cpu < IDLE_CPU and self.lag < self.lag_low
                and now - self._last_collect > IDLE_COLLECT_EVERY):
            self._last_collect = now
            gc.collect()  # whatever rare cycles the process made (not the call path)
            gc.freeze()
        self._handle = self._loop.call_at(now + INTERVAL, self._check, now + INTERVAL)

    def update(self, cpu: float, lag: float) -> None:
        """Apply one observation (separate from the clock for tests)."""
        before = self.shed
        if cpu > self.cpu_high or lag > self.lag_high:
            self._strikes += 1
            if self._strikes >= 2:
                # The later the loop runs, the bigger the step (up to 5x): a sudden jump in
                # load builds a backlog faster than 10 % more per look can drain,
                # and every second of backlog turns into retransmissions.
                step = STEP * max(1.0, min(MAX_STEPS, lag / self.lag_high))
                self.shed = min(1.0, self.shed + step)
        else:
            self._strikes = 0
            if lag < self.lag_low:
                # Far below the line the surge is over: halve instead of stepping down, so
                # callers are not turned away for seconds after it. Between the lines, ease
                # off by a quarter step: a load the worker can carry (at its clean rate it
                # runs at ~90 % of a core) must not stay refused after a surge; if it is too
                # much after all, the CPU crosses the high line and the share comes back.
                if cpu < self.cpu_low / 2:
                    shed = self.shed / 2
                elif cpu < self.cpu_low:
                    shed = self.shed - STEP
                else:
                    shed = self.shed - STEP / 4
                self.shed = shed if shed >= STEP / 2 else 0.0
        if self.shed != before:
            self._set(self.shed)
            if before == 0.0 or self.shed == 0.0:
                log.warning("%s (cpu %.0f%%, loop lag %.0f ms)",
                            "overloaded: refusing some new calls with 503" if self.shed
                            else "load back to normal: accepting every call",
                            cpu * 100, lag * 1000)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._young is not None:
            self._young.cancel()
            self._young = None
