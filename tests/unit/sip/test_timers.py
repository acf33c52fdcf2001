"""The timer queue: deadlines near (a heap) and far (buckets per second), driven by hand."""

from __future__ import annotations

import random

from switchboard.sip.timers import NEAR, TimerQueue


def advance(queue: TimerQueue, now: float, to: float) -> float:
    """What a driver does: run each deadline at its own time up to `to`."""
    while (deadline := queue.next_deadline()) is not None and deadline <= to:
        assert deadline >= now - 1e-9, "a deadline in the past was left behind"
        now = max(now, deadline)
        queue.run_due(now)
    return to


def test_timers_fire_in_deadline_order_near_and_far() -> None:
    queue = TimerQueue()
    queue.run_due(0.0)
    fired: list[tuple[str, float]] = []
    for name, when in (("lifetime", 43200.0), ("B", 32.0), ("A", 0.5), ("C", 180.0),
                       ("A2", 1.5), ("K", 5.0)):
        queue.call_at(when, lambda now, n=name: fired.append((n, now)))
    assert len(queue) == 6 and queue.next_deadline() == 0.5
    advance(queue, 0.0, 50_000.0)
    assert fired == [("A", 0.5), ("A2", 1.5), ("K", 5.0), ("B", 32.0), ("C", 180.0),
                     ("lifetime", 43200.0)]
    assert len(queue) == 0 and queue.next_deadline() is None


def test_a_cancelled_far_timer_leaves_nothing_behind() -> None:
    queue = TimerQueue()
    queue.run_due(0.0)
    timers = [queue.call_at(30.0 + i / 1000, lambda _now: None) for i in range(10_000)]
    assert len(queue) == 10_000
    for timer in timers:
        timer.cancel()
    # No tombstones: nothing to skip, nothing to rebuild later.
    assert len(queue) == 0 and queue.next_deadline() is None
    assert queue._heap == [] and queue._buckets == {}


def test_a_callback_may_arm_a_timer_near_or_far() -> None:
    queue = TimerQueue()
    queue.run_due(0.0)
    fired: list[float] = []

    def again(now: float) -> None:
        fired.append(now)
        if len(fired) < 3:
            queue.call_at(now + 10.0, again)

    queue.call_at(1.0, again)
    advance(queue, 0.0, 100.0)
    assert fired == [1.0, 11.0, 21.0]


def test_matches_a_plain_model_under_random_use() -> None:
    rng = random.Random(7)
    queue = TimerQueue()
    now = 0.0
    queue.run_due(now)
    live: dict[int, float] = {}  # id -> when
    handles = {}
    fired: list[int] = []
    expected: list[int] = []
    seq = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            delay = rng.choice([0.0, 0.5, 1.0, NEAR, 4.0, 32.0, 180.0]) + rng.random()
            handles[seq] = queue.call_at(now + delay, lambda _now, i=seq: fired.append(i))
            live[seq] = now + delay
            seq += 1
        elif op < 0.75 and live:
            victim = rng.choice(sorted(live))
            handles[victim].cancel()
            del live[victim]
        else:
            to = now + rng.random() * rng.choice([0.1, 1.0, 10.0, 60.0])
            due = sorted((when, i) for i, when in live.items() if when <= to)
            expected += [i for _, i in due]
            for _, i in due:
                del live[i]
            now = advance(queue, now, to)
            assert fired == expected
            assert len(queue) == len(live)
