"""The overload monitor's decisions (fed observations directly; no clock, no sleeping)."""

from __future__ import annotations

import pytest

from switchboard.actors.overload import OverloadMonitor


@pytest.mark.asyncio
async def test_two_high_readings_shed_and_low_ones_recover() -> None:
    states: list[bool] = []
    monitor = OverloadMonitor(states.append)
    try:
        monitor.update(0.99, 0.0)
        assert states == []  # one reading is not enough (a GC pause)
        monitor.update(0.99, 0.0)
        assert states == [True]
        monitor.update(0.80, 0.0)
        assert states == [True]  # between the thresholds: stays shedding
        monitor.update(0.50, 0.01)
        assert states == [True, False]
        monitor.update(0.10, 0.30)
        monitor.update(0.10, 0.30)
        assert states == [True, False, True]  # a late loop alone counts too
    finally:
        monitor.close()


@pytest.mark.asyncio
async def test_a_single_spike_between_normal_readings_does_nothing() -> None:
    states: list[bool] = []
    monitor = OverloadMonitor(states.append)
    try:
        for cpu in (0.99, 0.2, 0.99, 0.2, 0.99):
            monitor.update(cpu, 0.0)
        assert states == []
    finally:
        monitor.close()
