"""Metrics: statistics → Prometheus families, event counting, call-setup histogram, exposition.

The exposition is read back with prometheus-client's own text parser, so what is checked is
what Prometheus would scrape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.metrics import (
    SETUP_BUCKETS,
    CallMetrics,
    Metrics,
    SetupTimes,
    SwitchboardCollector,
    build_labels,
    metric_families,
)

STATS = {
    "core:bad_msg_hdr": 1,
    "core:drop_replies": 2,
    "core:drop_requests": 3,
    "core:err_requests": 4,
    "core:fwd_replies": 50,
    "core:fwd_requests": 60,
    "core:rcv_replies": 70,
    "core:rcv_requests": 80,
    "dialog:active_dialogs": 5,
    "dialog:early_dialogs": 2,
    "dialog:expired_dialogs": 1,
    "dialog:failed_dialogs": 3,
    "dialog:processed_dialogs": 20,
    "evi:dropped_events": 0,
    "registrar:accepted_regs": 9,
    "registrar:rejected_regs": 1,
    "tm:2xx_transactions": 15,
    "tm:4xx_transactions": 4,
    "tm:UAC_transactions": 61,
    "tm:UAS_transactions": 62,
    "tm:inuse_transactions": 7,
    "tm:retransmissions": 11,
    "usrloc:registered_contacts": 3,
    "callops:transfer_ok": 2,
    "callops:transfer_fail": 1,
    "callops:hold_ok": 4,
    "callops:hold_fail": 0,
    "callops:unhold_ok": 3,
    "callops:unhold_fail": 1,
    "auth:challenges": 30,
    "auth:failures": 12,
    "auth:bans": 2,
    "auth:banned_drops": 40,
    "core:relay_denied": 6,
    "core:unknown_dialog_requests": 8,
    "core:rate_limited": 9,
    "evi:webhook_delivered_events": 13,
    "evi:webhook_retries": 5,
    "evi:webhook_queue_full_drops": 21,
    "evi:webhook_rejected_events": 2,
    "evi:webhook_failed_events": 1,
}


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def render(stats: Mapping[str, int], setup: SetupTimes | None = None) -> str:
    collector = SwitchboardCollector({"version": "1.2.3", "python": "3.11", "runtime": "local"})
    collector.update(stats, setup or SetupTimes())
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_statistics_become_the_ecosystem_metric_names() -> None:
    samples = scrape(render(STATS))

    def value(name: str, **labels: str) -> float:
        return samples[("switchboard_" + name, tuple(sorted(labels.items())))]

    assert value("up") == 1
    assert value("build_info", version="1.2.3", python="3.11", runtime="local") == 1
    assert value("dialogs", state="early") == 2
    assert value("dialogs", state="confirmed") == 5
    assert value("dialogs_created_total") == 20
    assert value("dialogs_failed_total") == 3
    assert value("dialogs_expired_total") == 1
    assert value("transactions") == 7
    assert value("transactions_created_total", side="server") == 62
    assert value("transactions_created_total", side="client") == 61
    assert value("sip_requests_received_total") == 80
    assert value("sip_replies_received_total") == 70
    assert value("sip_requests_forwarded_total") == 60
    assert value("sip_replies_forwarded_total") == 50
    assert value("sip_responses_sent_total", code_class="2xx") == 15
    assert value("sip_responses_sent_total", code_class="4xx") == 4
    assert value("sip_responses_sent_total", code_class="6xx") == 0
    assert value("retransmissions_total") == 11
    assert value("registrations_total", result="accepted") == 9
    assert value("registered_contacts") == 3
    assert value("transfers_total", result="ok") == 2
    assert value("transfers_total", result="fail") == 1
    assert value("hold_operations_total", op="hold", result="ok") == 4
    assert value("hold_operations_total", op="unhold", result="fail") == 1
    # What docs/security.md says an attack shows.
    assert value("auth_challenges_total") == 30
    assert value("auth_failures_total") == 12
    assert value("auth_bans_total") == 2
    assert value("auth_banned_messages_dropped_total") == 40
    assert value("relay_denied_total") == 6
    assert value("unknown_dialog_requests_total") == 8
    assert value("rate_limited_requests_total") == 9
    assert value("webhook_events_delivered_total") == 13
    assert value("webhook_retries_total") == 5
    assert value("webhook_events_dropped_total", reason="queue_full") == 21
    assert value("webhook_events_dropped_total", reason="rejected") == 2
    assert value("webhook_events_dropped_total", reason="failed") == 1
    # Counters end in _total, gauges do not; no label carries a Call-ID or anything unbounded.
    for name, labels in samples:
        assert name.startswith("switchboard_")
        assert {k for k, _ in labels} <= {
            "state", "side", "code_class", "method", "result", "op", "le",
            "version", "python", "runtime", "reason",
        }


def test_missing_statistics_are_zero_and_families_stay_stable() -> None:
    full = scrape(render(STATS))
    empty = scrape(render({}))
    assert set(full) == set(empty)
    assert empty[("switchboard_dialogs_created_total", ())] == 0


def test_per_method_and_per_class_statistics_become_labels() -> None:
    stats = dict(STATS, **{
        "core:rcv_requests_invite": 30, "core:rcv_requests_bye": 20,
        "core:rcv_replies_1xx": 40, "core:rcv_replies_2xx": 30,
    })
    samples = scrape(render(stats))
    received = {
        dict(labels)["method"]: v
        for (name, labels), v in samples.items()
        if name == "switchboard_sip_requests_received_total"
    }
    assert received == {"INVITE": 30, "BYE": 20, "other": 30}
    classes = {
        dict(labels)["code_class"]: v
        for (name, labels), v in samples.items()
        if name == "switchboard_sip_replies_received_total"
    }
    assert classes == {"1xx": 40, "2xx": 30}


def test_no_label_value_is_text_from_a_message() -> None:
    """Label values come from fixed lists; a statistic name holding wire text (none does:
    the core counts only the methods it knows by name) would not become one, and the
    exposition stays ASCII."""
    stats = dict(STATS, **{"core:rcv_requests_invite": 30, "core:rcv_requests_x\udcff": 5,
                           "core:rcv_requests_\u00e9": 5, "tm:7xx_transactions": 1})
    text = render(stats)
    assert text.isascii()
    received = {
        dict(labels)["method"]: v
        for (name, labels), v in scrape(text).items()
        if name == "switchboard_sip_requests_received_total"
    }
    assert received == {"INVITE": 30, "other": 50}
    for family in metric_families(stats, SetupTimes(), build_labels("local")):
        for sample in family.samples:
            assert all(value.isascii() for value in sample.labels.values()), sample


def test_setup_histogram_is_cumulative_and_mergeable() -> None:
    setup = SetupTimes()
    for seconds in (0.003, 0.2, 0.2, 3.0, 500.0):
        setup.observe(seconds)
    other = SetupTimes()
    other.observe(0.005)  # on a bucket bound: counted in that bucket (le)
    setup.merge(other)
    assert setup.count == 6
    samples = scrape(render({}, setup))

    def bucket(le: str) -> float:
        return samples[("switchboard_call_setup_seconds_bucket", (("le", le),))]

    assert bucket("0.005") == 2
    assert bucket("0.1") == 2
    assert bucket("0.25") == 4
    assert bucket("5.0") == 5
    assert bucket("120.0") == 5
    assert bucket("+Inf") == 6
    assert samples[("switchboard_call_setup_seconds_count", ())] == 6
    assert samples[("switchboard_call_setup_seconds_sum", ())] == pytest.approx(503.408)
    with pytest.raises(ValueError):
        setup.merge(SetupTimes((1.0,)))
    copy = setup.copy()
    copy.observe(1.0)
    assert setup.count == 6


# --- counting from events ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dlg(dialog_id: str, old: int, new: int) -> dict[str, Any]:
    return {"id": dialog_id, "callid": "c", "old_state": old, "new_state": new}


def test_call_metrics_counts_outcomes_and_forwards_every_event() -> None:
    clock = Clock()
    starts = {"1.a": 98.5, "1.b": 99.75}
    metrics = CallMetrics(starts.get, clock)
    published: list[tuple[str, dict[str, Any]]] = []
    publish = metrics.wrap(lambda name, params: published.append((name, params)))

    events: list[tuple[str, dict[str, Any]]] = [
        ("E_DLG_STATE_CHANGED", dlg("1.a", 1, 2)),  # early: no setup time yet
        ("E_DLG_STATE_CHANGED", dlg("1.a", 2, 3)),  # 2xx: 1.5 s after the INVITE
        ("E_DLG_STATE_CHANGED", dlg("1.a", 3, 4)),  # ACK: not a second observation
        ("E_DLG_STATE_CHANGED", dlg("1.b", 1, 4)),  # straight to confirmed: 0.25 s
        ("E_DLG_STATE_CHANGED", dlg("1.c", 1, 3)),  # unknown dialog: ignored
        ("E_DLG_STATE_CHANGED", dlg("1.b", 4, 5)),
        ("E_CALL_TRANSFER", {"callid": "c", "state": "start", "status": ""}),
        ("E_CALL_TRANSFER", {"callid": "c", "state": "notify", "status": "100 Trying"}),
        ("E_CALL_TRANSFER", {"callid": "c", "state": "ok", "status": "200 OK"}),
        ("E_CALL_TRANSFER", {"callid": "c", "state": "fail", "status": "486 Busy Here"}),
        ("E_CALL_HOLD", {"callid": "c", "leg": "caller", "action": "hold", "state": "start"}),
        ("E_CALL_HOLD", {"callid": "c", "leg": "caller", "action": "hold", "state": "ok"}),
        ("E_CALL_HOLD", {"callid": "c", "leg": "callee", "action": "hold", "state": "ok"}),
        ("E_CALL_HOLD", {"callid": "c", "leg": "callee", "action": "unhold", "state": "fail"}),
        ("E_SOMETHING_ELSE", {"state": "ok"}),
    ]
    for name, params in events:
        publish(name, params)

    assert published == events
    assert metrics.setup.count == 2
    assert metrics.setup.total == pytest.approx(1.75)
    assert metrics.statistics() == {
        "callops:transfer_ok": 1,
        "callops:transfer_fail": 1,
        "callops:hold_ok": 2,
        "callops:hold_fail": 0,
        "callops:unhold_ok": 0,
        "callops:unhold_fail": 1,
    }


# --- the exposition -----------------------------------------------------------------------------


async def test_exposition_uses_its_own_registry_and_negotiates_the_format() -> None:
    calls = 0

    async def statistics() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"dialog:processed_dialogs": calls}

    setup = SetupTimes()
    metrics = Metrics(statistics, lambda: setup)
    body, content_type = await metrics.exposition()
    assert content_type.startswith("text/plain")
    samples = scrape(body.decode())
    assert samples[("switchboard_dialogs_created_total", ())] == 1
    assert any(name.startswith("process_") for name, _ in samples)  # process collector
    # A fresh snapshot per scrape.
    body, _ = await metrics.exposition()
    assert scrape(body.decode())[("switchboard_dialogs_created_total", ())] == 2

    body, content_type = await metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

    # Nothing leaked into prometheus-client's global registry.
    assert REGISTRY.get_sample_value("switchboard_up") is None


async def test_statistics_failure_reports_down() -> None:
    async def statistics() -> dict[str, int]:
        raise RuntimeError("worker gone")

    metrics = Metrics(statistics, SetupTimes)
    body, _ = await metrics.exposition()
    samples = scrape(body.decode())
    assert samples[("switchboard_up", ())] == 0
    assert ("switchboard_dialogs_created_total", ()) not in samples


def test_families_generator_and_build_labels() -> None:
    names = [f.name for f in metric_families({}, SetupTimes(), build_labels("local"))]
    assert len(names) == len(set(names))
    assert names[:2] == ["switchboard_up", "switchboard_build_info"]
    labels = build_labels("ray")
    assert labels["runtime"] == "ray" and labels["version"]
    assert tuple(sorted(SETUP_BUCKETS)) == SETUP_BUCKETS
