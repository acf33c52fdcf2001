"""The overload monitor's decisions (fed observations directly; no clock, no sleeping)."""

from __future__ import annotations

import pytest

from switchboard.actors.overload import OverloadMonitor


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
        monitor.update(0.85, 0.0)  # between the thresholds: holds
        assert shares == pytest.approx([0.1, 0.2])
        monitor.update(0.50, 0.01)
        monitor.update(0.50, 0.01)
        assert shares == pytest.approx([0.1, 0.2, 0.1, 0.0])
        assert not monitor.overloaded
        monitor.update(0.10, 0.30)
        monitor.update(0.10, 0.30)
        assert shares[-1] == pytest.approx(0.1)  # a late loop alone counts too
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
