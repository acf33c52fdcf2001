"""Overload detection for one worker: is it still keeping up with what arrives?

Twice a second it looks at two signs — the share of a CPU the process used since the last
look, and how late the loop ran this check (a loop busy with a backlog runs timers late) —
and tells the proxy core to shed new calls (503 + Retry-After) while either is high. The
thresholds have hysteresis so the state does not flap; it recovers by itself when load drops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INTERVAL = 0.5


class OverloadMonitor:
    def __init__(self, set_overloaded: Callable[[bool], None], *, cpu_high: float = 0.92,
                 cpu_low: float = 0.75, lag_high: float = 0.15, lag_low: float = 0.05) -> None:
        self._set = set_overloaded
        self.cpu_high, self.cpu_low = cpu_high, cpu_low
        self.lag_high, self.lag_low = lag_high, lag_low
        self.overloaded = False
        self._strikes = 0  # consecutive high readings: one GC pause is not an overload
        self.cpu = 0.0
        self.lag = 0.0
        self._loop = asyncio.get_running_loop()
        self._last_cpu = time.process_time()
        self._last_wall = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last_wall + INTERVAL, self._check, self._last_wall + INTERVAL)

    def _check(self, due: float) -> None:
        now = self._loop.time()
        cpu_now = time.process_time()
        elapsed = max(now - self._last_wall, 1e-6)
        self.cpu = (cpu_now - self._last_cpu) / elapsed
        self.lag = now - due
        self._last_cpu, self._last_wall = cpu_now, now
        self.update(self.cpu, self.lag)
        self._handle = self._loop.call_at(now + INTERVAL, self._check, now + INTERVAL)

    def update(self, cpu: float, lag: float) -> None:
        """Apply one observation (separate from the clock for tests)."""
        if not self.overloaded and cpu <= self.cpu_high and lag <= self.lag_high:
            self._strikes = 0
        if self.overloaded:
            if cpu < self.cpu_low and lag < self.lag_low:
                self.overloaded = False
                log.warning("load back to normal (cpu %.0f%%, lag %.0f ms): accepting calls",
                            cpu * 100, lag * 1000)
                self._set(False)
        elif cpu > self.cpu_high or lag > self.lag_high:
            self._strikes += 1
            if self._strikes < 2:
                return
            self._strikes = 0
            self.overloaded = True
            log.warning("overloaded (cpu %.0f%%, lag %.0f ms): new calls get 503",
                        cpu * 100, lag * 1000)
            self._set(True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
