"""The dialog store's metrics: exported only by a node that has a store, its availability
a 0/1 gauge beside the write counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.metrics import SetupTimes, SwitchboardCollector


def samples(stats: dict[str, int]) -> dict[str, float]:
    collector = SwitchboardCollector({"version": "1", "python": "3.11", "runtime": "local"})
    collector.update(stats, SetupTimes())
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_store_gauge_and_counters_only_with_a_store() -> None:
    without = samples({"dialog:active_dialogs": 1})
    assert not [name for name in without if "dialog_store" in name]
    down = samples({"store:available": 0, "store:writes": 7, "store:write_failures": 2})
    assert down["switchboard_dialog_store_available"] == 0
    assert down["switchboard_dialog_store_writes_total"] == 7
    assert down["switchboard_dialog_store_write_failures_total"] == 2
    assert samples({"store:available": 1})["switchboard_dialog_store_available"] == 1
