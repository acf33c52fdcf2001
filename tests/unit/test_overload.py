"""The overload monitor's decisions (fed observations directly; no clock, no sleeping) and the
receive queues it reads."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterator

import pytest

from switchboard.actors import overload
from switchboard.actors.overload import (
    LOOKS,
    MAX_STEPS,
    STEP,
    YOUNG_EVERY,
    OverloadMonitor,
    receive_queues,
)


def no_queues() -> tuple[float, int]:
    return 0.0, 0


@pytest.mark.asyncio
async def test_a_busy_process_that_keeps_up_is_never_refused() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append, queues=no_queues)
    try:
        for _ in range(100):
            monitor.update(0.0, 0.0, 0.99)  # 99 % of a core, its queue empty, on time
            monitor.update(0.9, 0.09, 1.0)  # a queue and a lag under their lines
        assert shares == []
        assert not monitor.overloaded
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_a_standing_queue_sheds_by_its_depth_and_easing_off_is_slow_while_busy() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append, queues=no_queues)
    try:
        monitor.update(1.5, 0.0, 0.3)  # over the line: even at 30 % of a core (shared host)
        assert shares == pytest.approx([1.5 * STEP])
        monitor.update(3.0, 0.0, 1.0)  # deeper: a bigger step
        monitor.update(40.0, 0.0, 1.0)  # far behind: at most MAX_STEPS at once
        assert shares == pytest.approx([0.075, 0.225, 0.225 + MAX_STEPS * STEP])
        monitor.update(0.5, 0.0, 1.0)  # under the line, not empty: held
        assert len(shares) == 3
        monitor.update(0.1, 0.0, 0.95)  # near empty but busy: a quarter step down
        assert shares[-1] == pytest.approx(0.475 - STEP / 4)
        monitor.update(0.1, 0.05, 0.95)  # ... not while the loop runs late
        assert len(shares) == 4
        for _ in range(9):
            monitor.update(0.0, 0.0, 0.3)  # mostly idle: the surge is over, a step a look
        assert shares[-9:] == pytest.approx(
            [0.4625 - STEP * i for i in range(1, 9)] + [0.0])  # under half a step: none
        assert not monitor.overloaded
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_drops_and_a_late_loop_count_and_the_share_stays_within_everything() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append, queues=no_queues)
    try:
        monitor.update(0.0, 0.0, 0.5, dropped=3)  # the buffer overflowed: the biggest step
        assert shares == pytest.approx([MAX_STEPS * STEP])
        monitor.update(0.0, 0.3, 0.5)  # three times the lag line: three steps
        assert shares[-1] == pytest.approx(0.4)
        for _ in range(5):
            monitor.update(0.0, 0.0, 0.5, dropped=1)
        assert shares[-1] == pytest.approx(1.0)  # never past everything
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_a_queue_counts_only_when_it_stands_at_every_one_of_the_last_looks() -> None:
    readings: list[tuple[float, int]] = [(0.0, 0)]  # at the start: nothing dropped yet
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append, queues=lambda: readings.pop(0))
    try:
        now = asyncio.get_running_loop().time
        for depth in (0.0, 4.0, 4.0, 0.0, 4.0, 0.0):  # bursts shorter than LOOKS looks
            readings.append((depth, 0))
            monitor._tick(now())
        assert shares == []
        for depth in [4.0] * LOOKS:
            readings.append((depth, 0))
            monitor._tick(now())
        assert shares == pytest.approx([4 * STEP])
        readings.append((3.0, 0))  # still over the line, but shrinking: held
        monitor._tick(now())
        assert len(shares) == 1
        readings.append((3.0, 0))  # no longer shrinking: another step, by its depth
        monitor._tick(now())
        assert shares[-1] == pytest.approx(7 * STEP)
        readings.append((0.0, 7))  # seven more datagrams dropped since the first look
        monitor._tick(now())
        assert shares[-1] == pytest.approx((7 + MAX_STEPS) * STEP)
    finally:
        monitor.close()


@pytest.fixture
def unread_socket() -> Iterator[socket.socket]:
    """A UDP socket nobody reads, as a worker's only listener."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def test_the_receive_queue_is_read_from_the_kernel(unread_socket: socket.socket,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert receive_queues([unread_socket]) == (0.0, 0)
    monkeypatch.setattr(overload, "QUEUE_HIGH", 10_000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(20):
            sender.sendto(b"x" * 500, unread_socket.getsockname())
    depth, dropped = receive_queues([unread_socket])
    # Twenty datagrams of 500 bytes take at least 10,000 bytes of the buffer.
    assert depth >= 1.0
    assert dropped == 0


def test_the_datagrams_a_full_queue_dropped_are_counted(unread_socket: socket.socket) -> None:
    unread_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(200):
            sender.sendto(b"x" * 1000, unread_socket.getsockname())
    depth, dropped = receive_queues([unread_socket])
    assert depth > 1.0  # a small buffer: its line is a quarter of it
    assert 0 < dropped < 200


@pytest.mark.asyncio
async def test_the_youngest_generation_is_collected_on_its_own_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `serve` turns automatic collection off (cluster/local.py): the monitor's clock runs it.
    generations: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: generations.append(generation) or 0)
    monitor = OverloadMonitor(lambda _share: None, queues=no_queues)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        await asyncio.sleep(2.5 * YOUNG_EVERY)
        assert generations and set(generations) == {0}  # no full collection on the way
        gc.enable()
        seen = len(generations)
        await asyncio.sleep(2.5 * YOUNG_EVERY)
        assert len(generations) == seen  # Python's own trigger is on: left to it
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
        monitor.close()



@pytest.mark.asyncio
async def test_memory_goes_back_once_what_is_held_fell_to_a_quarter_of_its_peak() -> None:
    monitor = OverloadMonitor(lambda _share: None, queues=no_queues)
    try:
        start = monitor._last_collect
        monitor.cpu = 0.05  # idle
        assert not monitor.full_collection_due(10_000, start + 1)  # the peak
        assert not monitor.full_collection_due(2_600, start + 2)  # not a quarter yet
        monitor.cpu = 0.9
        assert not monitor.full_collection_due(2_000, start + 3)  # busy: not now
        monitor.cpu = 0.05
        assert monitor.full_collection_due(2_000, start + 4)
        assert not monitor.full_collection_due(1_000, start + 5)  # the peak is 2,000 now
        assert monitor.full_collection_due(500, start + 6)
        assert monitor.full_collection_due(100, start + 7)
        assert not monitor.full_collection_due(0, start + 8)  # a peak of 100: not worth it
        later = start + 8 + overload.IDLE_COLLECT_EVERY + 1
        assert monitor.full_collection_due(0, later)  # the idle collection, every so often
        monitor.shed = 0.1  # refusing calls: never
        assert not monitor.full_collection_due(0, later + overload.IDLE_COLLECT_EVERY + 1)
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_a_full_collection_on_the_clock_gives_memory_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: list[bool] = []
    monkeypatch.setattr(overload, "give_back", lambda: given.append(True))
    held = [10_000]
    monitor = OverloadMonitor(lambda _share: None, queues=no_queues, held=lambda: held[0])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        await asyncio.sleep(2.5 * YOUNG_EVERY)  # the peak seen
        assert given == []
        held[0] = 0
        monitor.cpu = 0.0
        await asyncio.sleep(2.5 * YOUNG_EVERY)
        assert given == [True]
    finally:
        if was_enabled:
            gc.enable()
        monitor.close()
