"""Overload control for one worker: admit what it carries, refuse early when it falls behind.

A process falls behind when work arrives faster than its event loop takes it, and the place
where that shows first is the kernel's receive queue of its UDP listeners: the loop reads a
few dozen datagrams a turn and runs its timers in between, so the loop itself stays on time
(its lag near zero) while the backlog waits in the socket. A standing queue there is the
sign that matters: every message in it is late by the whole queue, and once the queue
holds half a second (RFC 3261 T1) the callers and callees retransmit, the work doubles and
the process collapses, dropping what no longer fits in the buffer. A busy process is not an
overloaded one: a loop that uses nearly all of a core and still empties its queue every turn
is keeping up, and refusing calls there only lowers the rate it can carry. The CPU share says
so little that the process may be behind with a small share of a shared machine and keeping
up with all of a core; it only tells how fast to ease off once the queue is gone.

So every TICK the monitor reads the bytes waiting in the fullest receive queue
(getsockopt SO_MEMINFO, Linux) and the datagrams the kernel dropped, and how late its own
timer ran (the sign for streams, and for a loop stalled outright). The queue counts when it
stood over the line at LOOKS looks in a row (a burst or a pause shorter than that is not a
backlog: the buffer rides it out, and shedding for it would refuse calls the process carries).
While behind, the share of new INVITEs refused with 503 + Retry-After grows, by bigger steps
the deeper the queue (a surge must be cut before its backlog turns into retransmissions),
and holds while the backlog shrinks (it is being worked off: more would overshoot);
while the queue is near empty and the loop on time it shrinks again, slowly while the
process is busy (it may be at its capacity: refusing a little too much costs less than a
backlog) and fast when it is mostly idle (the surge is over: callers must not be turned
away for long after it). The worker thus settles near its capacity with a short queue, and
recovers by itself. Calls already up are never refused.

It also runs the garbage collector's youngest generation on its clock (`cluster/local.py`
turns automatic collection off), and gives memory back after a peak: once the worker is idle
and what it holds (dialogs and transactions) fell to a fraction of the most it held since the
last time, a full collection empties CPython's free lists — thousands of tuples, floats, lists
and dicts kept for reuse, scattered over the pages the peak took, each keeping its page — and
the allocator is asked to return what is then free (`allocator.give_back`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable

from ..allocator import give_back

log = logging.getLogger(__name__)

# Seconds between looks. A standing queue is seen LOOKS looks after it forms, and the share
# can go from nothing to everything within a few looks.
TICK = 0.05
STEP = 0.05  # share of new calls refused, added or taken per look
MAX_STEPS = 5.0
# Bytes waiting in a receive queue above which it is a backlog: many turns of the loop's
# worth of datagrams, yet far below T1 (RFC 3261 §17.1.1.1) of delay at the rates one
# process carries, and far from a full buffer (`transport/udp.py` asks for a large one). A
# quarter of the buffer where the buffer is smaller.
QUEUE_HIGH = 1024 * 1024
LOOKS = 3
QUEUE_LOW = 1 / 8  # of the line: near empty, the loop keeps up
LAG_HIGH = 0.1
LAG_LOW = 0.02
BUSY_CPU = 0.5  # above this share of a core, ease off slowly
# The youngest generation is collected every TICK: a young collection walks every container
# made since the last one that is still alive (transactions waiting out their timers), so
# frequent small ones keep each pause short for the same total work. A full collection runs
# when the worker is idle, at most every IDLE_COLLECT_EVERY.
YOUNG_EVERY = TICK
IDLE_COLLECT_EVERY = 300.0
IDLE_CPU = 0.2
CPU_SMOOTHING = 0.2  # weight of the newest look in the CPU share
# Memory goes back once what the worker holds fell to 1/GIVE_BACK_FALL of its peak since the
# last time, if that peak was at least GIVE_BACK_PEAK dialogs and transactions (below that,
# a few hundred kilobytes at most are at stake).
GIVE_BACK_FALL = 4
GIVE_BACK_PEAK = 256

# getsockopt(SO_MEMINFO) fills the socket's memory counters: the receive queue's bytes
# first, the buffer's size second, the drops ninth (SK_MEMINFO_* in linux/sock_diag.h).
SO_MEMINFO = 55
MEMINFO = struct.Struct("9I")

Queues = Callable[[], tuple[float, int]]
Held = Callable[[], int]


def _nothing_held() -> int:
    return 0


def receive_queues(sockets: Iterable[socket.socket]) -> tuple[float, int]:
    """(the fullest receive queue of these UDP sockets in multiples of its line, datagrams
    their kernel queues dropped so far); (0, 0) where the kernel does not say."""
    if sys.platform != "linux":
        return 0.0, 0
    depth = 0.0
    dropped = 0
    for sock in sockets:
        try:
            info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size)
        except OSError:
            continue
        if len(info) < MEMINFO.size:
            continue
        waiting, buffer, *_, lost = MEMINFO.unpack(info)
        depth = max(depth, waiting / max(1, min(QUEUE_HIGH, buffer // 4)))
        dropped += lost
    return depth, dropped


class OverloadMonitor:
    def __init__(self, set_shed_fraction: Callable[[float], None], *,
                 queues: Queues, held: Held = _nothing_held, lag_high: float = LAG_HIGH,
                 lag_low: float = LAG_LOW) -> None:
        self._set = set_shed_fraction
        self._queues = queues
        # How many dialogs and transactions the worker holds, and the most since memory
        # was last given back.
        self._held = held
        self._peak = 0
        self.lag_high, self.lag_low = lag_high, lag_low
        self.shed = 0.0  # share of new calls refused
        self.cpu = 0.0  # share of a core, smoothed over the last looks
        self.lag = 0.0
        self.queue = 0.0  # the standing queue, in multiples of its line
        self._depths = [0.0] * LOOKS  # the last looks' readings, oldest first
        self._lags = [0.0] * LOOKS
        self._loop = asyncio.get_running_loop()
        self._last_cpu = time.process_time()
        self._last_wall = self._loop.time()
        self._last_collect = self._last_wall
        self._dropped = queues()[1]
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last_wall + TICK, self._tick, self._last_wall + TICK)

    @property
    def overloaded(self) -> bool:
        return self.shed > 0.0

    def _tick(self, due: float) -> None:
        now = self._loop.time()
        cpu_now = time.process_time()
        elapsed = max(now - self._last_wall, 1e-6)
        cpu = (cpu_now - self._last_cpu) / elapsed
        self.cpu += CPU_SMOOTHING * (cpu - self.cpu)
        self._last_cpu, self._last_wall = cpu_now, now
        lag = now - due
        depth, dropped = self._queues()
        draining = depth < 0.9 * self._depths[-1]
        self._depths = [*self._depths[1:], depth]
        self._lags = [*self._lags[1:], lag]
        self.queue = min(self._depths)  # what stood at every one of the last looks
        self.lag = min(self._lags)
        # A backlog that shrinks look by look is being worked off at the share refused now:
        # refusing more would overshoot (the queue lags behind the share).
        self.update(self.queue, self.lag, self.cpu, dropped - self._dropped, draining=draining)
        self._dropped = dropped
        if not gc.isenabled():
            gc.collect(0)  # what the last look's worth of work made and still holds
            if self.full_collection_due(self._held(), now):
                # Whatever rare cycles the process made (not the call path), and the free
                # lists, which only a full collection empties.
                gc.collect()
                gc.freeze()
                give_back()
        after = self._loop.time()
        self._handle = self._loop.call_at(after + TICK, self._tick, after + TICK)

    def full_collection_due(self, held: int, now: float) -> bool:
        """Whether to collect every generation and give memory back now (separate from the
        clock for tests), `held` being the dialogs and transactions the worker holds: only
        while idle, and once what it holds fell to a fraction of its peak since the last
        time, or at most every IDLE_COLLECT_EVERY."""
        self._peak = max(self._peak, held)
        if self.cpu >= IDLE_CPU or self.shed:
            return False
        fell = self._peak >= GIVE_BACK_PEAK and held * GIVE_BACK_FALL <= self._peak
        if not fell and now - self._last_collect <= IDLE_COLLECT_EVERY:
            return False
        self._last_collect = now
        self._peak = held
        return True

    def update(self, queue: float, lag: float, cpu: float, dropped: int = 0, *,
               draining: bool = False) -> None:
        """Apply one look (separate from the clock for tests): the standing receive queue in
        multiples of its line, the loop's standing lag in seconds, the share of a core used,
        datagrams the kernel dropped since the last look, whether the queue is shrinking."""
        before = self.shed
        if dropped > 0 or (queue > 1.0 and not draining) or lag > self.lag_high:
            # The deeper the backlog, the bigger the step: a surge builds it faster than one
            # step a look can cut, and a full buffer means the callers retransmit already.
            depth = MAX_STEPS if dropped > 0 else max(queue, lag / self.lag_high)
            self.shed = min(1.0, self.shed + STEP * min(MAX_STEPS, max(1.0, depth)))
        elif queue <= QUEUE_LOW and lag < self.lag_low and self.shed:
            shed = self.shed - (STEP / 4 if cpu > BUSY_CPU else STEP)
            self.shed = shed if shed >= STEP / 2 else 0.0
        if self.shed != before:
            self._set(self.shed)
            if before == 0.0 or self.shed == 0.0:
                log.warning("%s (receive queue %.1f of its line, %d datagrams dropped, loop "
                            "lag %.0f ms, cpu %.0f%%)",
                            "overloaded: refusing some new calls with 503" if self.shed
                            else "load back to normal: accepting every call",
                            queue, dropped, lag * 1000, cpu * 100)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
