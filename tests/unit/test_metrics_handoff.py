"""The hand-off channel's metrics: exported only by workers that share their node's address
(`[runtime] shared_port`), one counter per `handoff:*` statistic."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.metrics import SetupTimes, SwitchboardCollector


def samples(stats: dict[str, int]) -> dict[str, float]:
    collector = SwitchboardCollector({"version": "1", "python": "3.11", "runtime": "ray"})
    collector.update(stats, SetupTimes())
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_handoff_counters_only_where_workers_share_an_address() -> None:
    assert not [name for name in samples({"dialog:active_dialogs": 1}) if "handoff" in name]
    shared = samples({"handoff:sent": 9, "handoff:received": 8, "handoff:refused": 1,
                      "handoff:lost": 0, "handoff:binding_updates_sent": 4,
                      "handoff:binding_updates_applied": 3, "handoff:binding_tables_sent": 2})
    assert {name: value for name, value in shared.items() if "handoff" in name} == {
        "switchboard_handoff_sent_total": 9,
        "switchboard_handoff_received_total": 8,
        "switchboard_handoff_refused_total": 1,
        "switchboard_handoff_lost_total": 0,
        "switchboard_handoff_binding_updates_sent_total": 4,
        "switchboard_handoff_binding_updates_applied_total": 3,
        "switchboard_handoff_binding_tables_sent_total": 2,
    }
