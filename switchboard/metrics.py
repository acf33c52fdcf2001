"""Prometheus metrics: a node's statistics as metric families, plus the call-setup time.

`CallMetrics` counts from the core's events what the core does not: transfer and hold
outcomes, and how long calls take to be answered. The worker hands it every event (`count`),
whether or not anybody takes the event itself; `observe` counts the same from the event as
published (name and parameters), and `wrap` counts on the way of a publish callable.
`SwitchboardCollector` turns one statistics snapshot ("group:name" → int, as
`ControlApi.statistics()` returns it) and a `SetupTimes` histogram into the metric families of
ecosystem.md §4, prefixed `switchboard_`. `Metrics` owns a private `CollectorRegistry` (never
prometheus-client's global one) and renders the exposition for the `/metrics` handler.

Snapshots are plain dicts and lists, so a cluster runtime can add up its workers' snapshots and
serve one scrape for the whole cluster. Nothing here knows HTTP, SIP messages or actors.

No label value is text from a message: the build labels are ours, the others come from fixed
lists, and the per-method and per-class ones from statistic names matching `[a-z]+` / `[1-6]`
(the core counts by name only the methods it knows), so a scrape is always valid UTF-8.
"""

from __future__ import annotations

import bisect
import logging
import platform
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import __version__
from .events.opensips import opensips_event
from .sip.dialog import DialogState, DialogStateChanged
from .sip.events import CallEvent

log = logging.getLogger(__name__)

PREFIX: Final = "switchboard_"

# Call setup (INVITE in → 2xx relayed) includes ringing, so the buckets reach into minutes.
SETUP_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)

# Outcome counters kept from events; they join the node's statistics under these names.
TRANSFER_RESULTS: Final = ("ok", "fail")
HOLD_OPS: Final = ("hold", "unhold")
HOLD_RESULTS: Final = ("ok", "fail")


@dataclass(slots=True)
class SetupTimes:
    """A mergeable histogram: `counts[i]` observations ≤ `buckets[i]`, the last one +Inf."""

    buckets: tuple[float, ...] = SETUP_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: SetupTimes) -> None:
        if other.buckets != self.buckets:
            raise ValueError("cannot merge histograms with different buckets")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def copy(self) -> SetupTimes:
        return SetupTimes(self.buckets, list(self.counts), self.total)


Publish = Callable[[str, dict[str, Any]], None]


class CallMetrics:
    """Counts from the worker's events: transfer and hold outcomes and call-setup time.

    `start_time_of(dialog_id)` gives the time a dialog's INVITE arrived (None when unknown),
    and `now()` the current time on the same clock.
    """

    def __init__(
        self,
        start_time_of: Callable[[str], float | None],
        now: Callable[[], float],
        buckets: tuple[float, ...] = SETUP_BUCKETS,
    ) -> None:
        self._start_time_of = start_time_of
        self._now = now
        self.counts: Counter[str] = Counter()
        self.setup = SetupTimes(buckets)

    def wrap(self, publish: Publish) -> Publish:
        """`publish`, counting each event on its way."""
        observe = self.observe

        def publish_counted(name: str, params: dict[str, Any]) -> None:
            observe(name, params)
            publish(name, params)

        return publish_counted

    def count(self, event: DialogStateChanged | CallEvent) -> None:
        """Count one of the core's events. A dialog's state change, four a call, costs two
        set lookups unless it is the answer; transfers and holds, rare, are counted from
        their published form."""
        if isinstance(event, DialogStateChanged):
            if event.old_state in _NOT_ANSWERED and event.new_state in _ANSWERED:
                self._answered(event.dialog_id)
        else:
            self.observe(*opensips_event(event))

    def observe(self, name: str, params: Mapping[str, Any]) -> None:
        if name == "E_DLG_STATE_CHANGED":
            old, new = params.get("old_state"), params.get("new_state")
            if old in _NOT_ANSWERED and new in _ANSWERED:
                self._answered(str(params.get("id")))
        elif name == "E_CALL_TRANSFER":
            state = params.get("state")
            if state in TRANSFER_RESULTS:
                self.counts[f"callops:transfer_{state}"] += 1
        elif name == "E_CALL_HOLD":
            action, state = params.get("action"), params.get("state")
            if action in HOLD_OPS and state in HOLD_RESULTS:
                self.counts[f"callops:{action}_{state}"] += 1

    def _answered(self, dialog_id: str) -> None:
        # First entry into confirmed (2xx seen, or ACKed) from unconfirmed or early.
        started = self._start_time_of(dialog_id)
        if started is not None:
            self.setup.observe(max(0.0, self._now() - started))

    def statistics(self) -> dict[str, int]:
        """The outcome counters as statistics (every one present, zeros included)."""
        names = [f"callops:transfer_{r}" for r in TRANSFER_RESULTS]
        names += [f"callops:{op}_{r}" for op in HOLD_OPS for r in HOLD_RESULTS]
        return {name: self.counts.get(name, 0) for name in names}


# --- statistics → metric families ----------------------------------------------------------

# (statistic, metric name without prefix and `_total`, help)
_NOT_ANSWERED: Final = frozenset({DialogState.UNCONFIRMED, DialogState.EARLY})
_ANSWERED: Final = frozenset({DialogState.CONFIRMED_NA, DialogState.CONFIRMED})
_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("dialog:processed_dialogs", "dialogs_created", "Dialogs created (initial INVITEs relayed)."),
    ("dialog:failed_dialogs", "dialogs_failed", "Dialogs that ended without being answered."),
    ("dialog:expired_dialogs", "dialogs_expired", "Dialogs ended by their lifetime timer."),
    ("core:fwd_requests", "sip_requests_forwarded", "SIP requests relayed."),
    ("core:fwd_replies", "sip_replies_forwarded", "SIP responses relayed."),
    ("core:drop_requests", "sip_requests_dropped", "SIP requests dropped without an answer."),
    ("core:drop_replies", "sip_replies_dropped", "SIP responses dropped (no transaction)."),
    ("core:err_requests", "sip_requests_invalid", "SIP requests refused as malformed."),
    ("core:bad_msg_hdr", "sip_messages_unparsable", "SIP messages that could not be parsed."),
    ("tm:retransmissions", "retransmissions", "Request retransmissions absorbed."),
    ("evi:dropped_events", "events_dropped", "Events not delivered to a subscriber."),
    ("evi:webhook_delivered_events", "webhook_events_delivered",
     "Events a webhook accepted (answered 2xx)."),
    ("evi:webhook_retries", "webhook_retries",
     "Webhook requests sent again after a 5xx, a timeout or a connection error."),
    ("hep:sent_packets", "hep_packets_sent", "HEP capture packets sent."),
    ("hep:dropped_packets", "hep_packets_dropped", "SIP packets the HEP mirror could not send."),
    ("auth:challenges", "auth_challenges", "Digest challenges sent (401 and 407)."),
    ("auth:failures", "auth_failures", "Wrong digest credentials received."),
    ("auth:bans", "auth_bans", "Sources banned after failed digests."),
    ("auth:banned_drops", "auth_banned_messages_dropped",
     "SIP messages dropped unanswered because their source is banned."),
    ("core:relay_denied", "relay_denied", "New requests refused as relaying (403)."),
    ("core:unknown_dialog_requests", "unknown_dialog_requests",
     "In-dialog requests from untrusted sources outside any dialog or route of ours."),
    ("core:rate_limited", "rate_limited_requests",
     "Requests dropped by the per-source rate limit."),
)
_GAUGES: Final[tuple[tuple[str, str, str], ...]] = (
    ("tm:inuse_transactions", "transactions", "SIP transactions in progress."),
    ("usrloc:registered_contacts", "registered_contacts", "Contacts in the location table."),
    ("evi:subscriptions", "event_subscriptions", "Event subscriptions in force."),
)
_STORE_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("store:writes", "dialog_store_writes", "Batches written to the dialog store."),
    ("store:write_failures", "dialog_store_write_failures",
     "Writes to the dialog store that failed."),
)
# Workers that share their node's address (`transport/handoff.py`, `cluster/bindings.py`).
_HANDOFF_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("handoff:sent", "handoff_sent", "Messages handed to the worker of the node that owns them."),
    ("handoff:received", "handoff_received", "Messages other workers of the node handed over."),
    ("handoff:refused", "handoff_refused",
     "Messages whose owner could not be reached (handled where they arrived)."),
    ("handoff:lost", "handoff_lost", "Hand-off connections given up with messages unsent."),
    ("handoff:binding_updates_sent", "handoff_binding_updates_sent",
     "Location changes sent to the other workers of the node."),
    ("handoff:binding_updates_applied", "handoff_binding_updates_applied",
     "Other workers' location changes applied to this one's copy."),
    ("handoff:binding_tables_sent", "handoff_binding_tables_sent",
     "Whole location tables sent to workers that started."),
)
_WEBHOOK_DROPS: Final = (
    ("queue_full", "evi:webhook_queue_full_drops"),
    ("rejected", "evi:webhook_rejected_events"),
    ("failed", "evi:webhook_failed_events"),
)
_METHOD_STAT = re.compile(r"core:rcv_requests_([a-z]+)\Z")
_CLASS_STAT = re.compile(r"tm:([1-6])xx_transactions\Z")
_REPLY_CLASS_STAT = re.compile(r"core:rcv_replies_([1-6])xx\Z")


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, labels=labels)


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


def metric_families(
    stats: Mapping[str, int], setup: SetupTimes, build: Mapping[str, str]
) -> Iterator[Metric]:
    """The metric families for one statistics snapshot."""

    def stat(name: str) -> int:
        return int(stats.get(name, 0))

    up = _gauge("up", "1 when the node answered this scrape with its statistics.")
    up.add_metric([], 1)
    yield up
    info = _gauge("build_info", "Version and runtime of this node (value is always 1).",
                  labels=list(build))
    info.add_metric(list(build.values()), 1)
    yield info

    dialogs = _gauge("dialogs", "Dialogs in progress, by state.", labels=["state"])
    dialogs.add_metric(["early"], stat("dialog:early_dialogs"))
    dialogs.add_metric(["confirmed"], stat("dialog:active_dialogs"))
    yield dialogs
    for key, name, documentation in _GAUGES:
        gauge = _gauge(name, documentation)
        gauge.add_metric([], stat(key))
        yield gauge
    for key, name, documentation in _COUNTERS:
        counter = _counter(name, documentation)
        counter.add_metric([], stat(key))
        yield counter
    if "store:available" in stats:  # only a node with a `[dialog] store`
        available = _gauge("dialog_store_available",
                           "1 while the dialog store takes writes, 0 while the node keeps "
                           "its dialogs in memory only (the store failed a write).")
        available.add_metric([], stat("store:available"))
        yield available
        for key, name, documentation in _STORE_COUNTERS:
            counter = _counter(name, documentation)
            counter.add_metric([], stat(key))
            yield counter
    if "handoff:sent" in stats:  # only workers that share their node's address
        for key, name, documentation in _HANDOFF_COUNTERS:
            counter = _counter(name, documentation)
            counter.add_metric([], stat(key))
            yield counter

    yield _by_label(
        stats, "sip_requests_received", "SIP requests received.", "core:rcv_requests",
        _METHOD_STAT, "method", str.upper,
    )
    yield _by_label(
        stats, "sip_replies_received", "SIP responses received.", "core:rcv_replies",
        _REPLY_CLASS_STAT, "code_class", lambda d: f"{d}xx",
    )
    responses = _counter(
        "sip_responses_sent",
        "Final responses sent upstream for relayed requests, by class (tm:Nxx_transactions).",
        labels=["code_class"],
    )
    for digit in "23456":
        responses.add_metric([f"{digit}xx"], stat(f"tm:{digit}xx_transactions"))
    yield responses

    created = _counter("transactions_created", "SIP transactions created.", labels=["side"])
    created.add_metric(["server"], stat("tm:UAS_transactions"))
    created.add_metric(["client"], stat("tm:UAC_transactions"))
    yield created
    regs = _counter("registrations", "REGISTER requests handled.", labels=["result"])
    regs.add_metric(["accepted"], stat("registrar:accepted_regs"))
    regs.add_metric(["rejected"], stat("registrar:rejected_regs"))
    yield regs

    transfers = _counter("transfers", "Call transfers finished, by result.", labels=["result"])
    for result in TRANSFER_RESULTS:
        transfers.add_metric([result], stat(f"callops:transfer_{result}"))
    yield transfers
    holds = _counter("hold_operations", "Hold and unhold re-INVITEs finished.",
                     labels=["op", "result"])
    for op in HOLD_OPS:
        for result in HOLD_RESULTS:
            holds.add_metric([op, result], stat(f"callops:{op}_{result}"))
    yield holds
    webhook_drops = _counter(
        "webhook_events_dropped",
        "Events a webhook did not get: its queue was full, it refused them (3xx, 4xx), or "
        "the last retry failed.", labels=["reason"])
    for reason, key in _WEBHOOK_DROPS:
        webhook_drops.add_metric([reason], stat(key))
    yield webhook_drops

    yield _histogram(setup)


def _by_label(
    stats: Mapping[str, int],
    name: str,
    documentation: str,
    total_key: str,
    pattern: re.Pattern[str],
    label: str,
    value: Callable[[str], str],
) -> CounterMetricFamily:
    """A counter split by `label` when the statistics carry per-label keys (`pattern`), with
    the rest of the total as "other"; the plain total otherwise."""
    parts = {value(m.group(1)): n for key, n in stats.items() if (m := pattern.match(key))}
    total = int(stats.get(total_key, 0))
    if not parts:
        family = _counter(name, documentation)
        family.add_metric([], total)
        return family
    family = _counter(name, documentation, labels=[label])
    for label_value, count in sorted(parts.items()):
        family.add_metric([label_value], count)
    rest = total - sum(parts.values())
    if rest > 0:
        family.add_metric(["other"], rest)
    return family


def _histogram(setup: SetupTimes) -> HistogramMetricFamily:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*setup.buckets, float("inf")), setup.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(
        PREFIX + "call_setup_seconds",
        "Time from an initial INVITE arriving to its 2xx being relayed.",
        buckets=buckets,
        sum_value=setup.total,
    )


def _down() -> Iterator[Metric]:
    up = _gauge("up", "1 when the node answered this scrape with its statistics.")
    up.add_metric([], 0)
    yield up


class SwitchboardCollector:
    """A prometheus-client collector over the last snapshot given to `update`."""

    def __init__(self, build: Mapping[str, str]) -> None:
        self.build = dict(build)
        self._stats: Mapping[str, int] | None = None
        self._setup = SetupTimes()

    def update(self, stats: Mapping[str, int] | None, setup: SetupTimes) -> None:
        """The snapshot the next `collect` reports; None when the node could not answer."""
        self._stats = stats
        self._setup = setup

    def collect(self) -> Iterable[Metric]:
        if self._stats is None:
            return list(_down())
        return list(metric_families(self._stats, self._setup, self.build))


def build_labels(runtime: str) -> dict[str, str]:
    return {"version": __version__, "python": platform.python_version(), "runtime": runtime}


class Metrics:
    """The `/metrics` exposition of one node.

    `statistics` is `ControlApi.statistics`; `setup_times` returns the call-setup histogram.
    Each scrape takes a fresh snapshot; process metrics (`process_*`) come along.
    """

    def __init__(
        self,
        statistics: Callable[[], Awaitable[Mapping[str, int]]],
        setup_times: Callable[[], SetupTimes],
        *,
        runtime: str = "local",
    ) -> None:
        self._statistics = statistics
        self._setup_times = setup_times
        self.registry = CollectorRegistry()
        self.collector = SwitchboardCollector(build_labels(runtime))
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, in the format `accept` asks for."""
        try:
            stats: Mapping[str, int] | None = await self._statistics()
        except Exception:
            log.warning("metrics: statistics unavailable", exc_info=True)
            stats = None
        # No await between the update and the encoding: concurrent scrapes cannot mix.
        self.collector.update(stats, self._setup_times().copy())
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
