"""The overload monitor's decisions (fed observations directly; no clock, no sleeping)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from switchboard.actors.overload import YOUNG_EVERY, OverloadMonitor


@pytest.mark.asyncio
async def test_shedding_grows_while_high_and_shrinks_while_low() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append)
    try:
        monitor.update(0.99, 0.0)
        assert shares == []  # one reading is not enough (a GC pause)
        monitor.update(0.99, 0.0)
        monitor.update(0.99, 0.0)
        assert shares == pytest.approx([0.1, 0.2])
        monitor.update(0.90, 0.0)  # between the lines: eases off by a quarter step
        assert shares == pytest.approx([0.1, 0.2, 0.175])
        monitor.update(0.90, 0.06)  # ... but not while the loop runs late
        assert shares == pytest.approx([0.1, 0.2, 0.175])
        monitor.update(0.50, 0.01)
        monitor.update(0.50, 0.01)
        assert shares == pytest.approx([0.1, 0.2, 0.175, 0.075, 0.0])
        assert not monitor.overloaded
        monitor.update(0.10, 0.15 + 1e-9)
        monitor.update(0.10, 0.15 + 1e-9)
        assert shares[-1] == pytest.approx(0.1)  # a late loop alone counts too
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_the_later_the_loop_the_bigger_the_step() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append)
    try:
        monitor.update(0.99, 0.45)
        monitor.update(0.99, 0.45)  # 3x the lag threshold: three steps at once
        monitor.update(0.99, 3.0)  # far behind: at most five steps
        assert shares == pytest.approx([0.3, 0.8])
        monitor.update(0.99, 3.0)
        assert shares[-1] == pytest.approx(1.0)  # never past everything
        monitor.update(0.80, 0.0)  # below the line, not far: one step down
        assert shares[-1] == pytest.approx(0.9)
        for _ in range(5):
            monitor.update(0.30, 0.0)  # far below: the surge is over, halve
        assert shares[-5:] == pytest.approx([0.45, 0.225, 0.1125, 0.05625, 0.0])
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_a_single_spike_between_normal_readings_does_nothing() -> None:
    shares: list[float] = []
    monitor = OverloadMonitor(shares.append)
    try:
        for cpu in (0.99, 0.2, 0.99, 0.2, 0.99):
            monitor.update(cpu, 0.0)
        assert shares == []
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_the_youngest_generation_is_collected_on_its_own_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `serve` turns automatic collection off (cluster/local.py): the monitor's clock runs it.
    generations: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: generations.append(generation) or 0)
    monitor = OverloadMonitor(lambda _share: None)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        monitor._check(asyncio.get_running_loop().time())
        assert generations == []  # the overload look itself does not collect
        await asyncio.sleep(2.5 * YOUNG_EVERY)
        assert generations and set(generations) == {0}
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
