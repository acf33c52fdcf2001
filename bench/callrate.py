"""Call rate: SIPp UAC -> proxy -> SIPp UAS at stepped offered rates.

One step runs a fresh SIPp UAS, then a SIPp UAC offering `rate` calls/s for `duration` seconds
(`rate * duration` calls: INVITE, 180, 200, ACK, BYE, 200, all through the proxy). Around the
UAC run the bench reads the proxy's CPU time (all its processes), samples its memory, and the
load generator's and the whole machine's CPU.

A step is clean when no call failed, retransmissions stay under 1 % of the messages the load
generator sent, and the calls completed at (nearly) the offered rate. The suite steps the rate
up and stops at the first step that is not clean; the highest clean rate is the system's result.

CPU percentages are of one core, as `top` shows them (200 % = both cores of this machine):
`proxy_cpu_pct` the proxy, `loadgen_cpu_pct` SIPp (UAC + UAS), `host_cpu_busy_pct` the whole
machine, `other_cpu_pct` whatever else ran meanwhile (it skews a step when it is not ~0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

from . import proc, sipp
from .record import JsonRecord
from .systems import System

# --- the clean-step rule ----------------------------------------------------------------------

MAX_RETRANS_RATIO = 0.01
"""Retransmissions / messages sent by the load generator must stay below this."""
MIN_RATE_RATIO = 0.90
"""Completed calls/s must reach this share of the offered rate (else SIPp or the proxy fell
behind and the rate was not really offered)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    clean: bool
    reasons: tuple[str, ...]


def judge_step(
    *,
    planned: int,
    successful: int,
    failed: int,
    retransmissions: int,
    messages: int,
    offered_rate: float,
    completed_rate: float,
    max_retrans_ratio: float = MAX_RETRANS_RATIO,
    min_rate_ratio: float = MIN_RATE_RATIO,
) -> Verdict:
    """The clean-step rule; `reasons` says what made a step unclean (empty when clean)."""
    reasons: list[str] = []
    if failed > 0:
        reasons.append(f"{failed} failed calls")
    missing = planned - successful - failed
    if missing > 0:
        reasons.append(f"{missing} calls never finished")
    if messages > 0 and retransmissions / messages >= max_retrans_ratio:
        reasons.append(
            f"retransmissions {retransmissions / messages:.1%} of messages "
            f"(limit {max_retrans_ratio:.0%})"
        )
    elif messages <= 0 and planned > 0:
        reasons.append("no messages sent")
    if offered_rate > 0 and completed_rate < min_rate_ratio * offered_rate:
        reasons.append(
            f"completed {completed_rate:.0f} calls/s, under {min_rate_ratio:.0%} of offered"
        )
    return Verdict(not reasons, tuple(reasons))


# --- one step ---------------------------------------------------------------------------------


@dataclass(slots=True)
class StepResult(JsonRecord):
    offered_rate: float
    duration_s: float
    planned_calls: int
    successful_calls: int = 0
    failed_calls: int = 0
    retransmissions: int = 0
    messages_sent: int = 0
    retrans_ratio: float = 0.0
    elapsed_s: float = 0.0
    completed_rate: float = 0.0
    rtt_samples: int = 0
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    rtt_max_ms: float | None = None
    proxy_cpu_s: float = 0.0
    cpu_ms_per_call: float | None = None
    drain_s: float = 0.0
    drain_cpu_s: float = 0.0
    cpu_ms_per_call_with_drain: float | None = None
    proxy_cpu_pct: float = 0.0
    proxy_processes: int = 0
    rss_kb_peak: int = 0
    pss_kb_peak: int = 0
    loadgen_cpu_pct: float = 0.0
    proxy_udp_drops: int = 0
    loadgen_udp_drops: int = 0
    host_cpu_busy_pct: float = 0.0
    other_cpu_pct: float = 0.0
    clean: bool = False
    reasons: list[str] = field(default_factory=list)
    attempt: int = 1
    worker_cpu_ms_per_call: float | None = None
    """Multi-process runtimes (Ray): CPU per call of the worker processes alone, without the
    runtime's own processes (GCS, raylet ...) that `cpu_ms_per_call` includes."""
    load_generators: int = 1
    """SIPp UACs that offered the rate together (one per worker port)."""


def summarize_step(
    *,
    offered_rate: float,
    duration_s: float,
    planned: int,
    uac_stats: dict[str, str],
    uas_stats: dict[str, str],
    rtts: Sequence[float],
    elapsed_s: float,
    proxy_cpu_s: float,
    proxy_processes: int,
    rss_kb_peak: int,
    pss_kb_peak: int,
    loadgen_cpu_s: float,
    host_busy_pct: float,
    sends_per_call: int,
    drain_s: float = 0.0,
    drain_cpu_s: float = 0.0,
    proxy_udp_drops: int = 0,
    loadgen_udp_drops: int = 0,
) -> StepResult:
    """Everything measured in one step → a `StepResult` with its verdict (pure)."""
    successful = sipp.stat_int(uac_stats, "SuccessfulCall(C)")
    failed = sipp.stat_int(uac_stats, "FailedCall(C)") + sipp.stat_int(uas_stats, "FailedCall(C)")
    retrans = (sipp.stat_int(uac_stats, "Retransmissions(C)")
               + sipp.stat_int(uas_stats, "Retransmissions(C)"))
    attempted = successful + sipp.stat_int(uac_stats, "FailedCall(C)")
    messages = attempted * sends_per_call
    completed_rate = successful / elapsed_s if elapsed_s > 0 else 0.0
    verdict = judge_step(
        planned=planned, successful=successful, failed=failed, retransmissions=retrans,
        messages=messages, offered_rate=offered_rate, completed_rate=completed_rate,
    )
    return StepResult(
        offered_rate=offered_rate,
        duration_s=duration_s,
        planned_calls=planned,
        successful_calls=successful,
        failed_calls=failed,
        retransmissions=retrans,
        messages_sent=messages,
        retrans_ratio=retrans / messages if messages else 0.0,
        elapsed_s=round(elapsed_s, 3),
        completed_rate=round(completed_rate, 1),
        rtt_samples=len(rtts),
        rtt_p50_ms=sipp.percentile(rtts, 50),
        rtt_p99_ms=sipp.percentile(rtts, 99),
        rtt_max_ms=max(rtts) if rtts else None,
        proxy_cpu_s=round(proxy_cpu_s, 3),
        cpu_ms_per_call=round(proxy_cpu_s * 1000 / successful, 4) if successful else None,
        drain_s=drain_s,
        drain_cpu_s=round(drain_cpu_s, 3),
        cpu_ms_per_call_with_drain=(
            round((proxy_cpu_s + drain_cpu_s) * 1000 / successful, 4)
            if successful and drain_s > 0 else None
        ),
        proxy_cpu_pct=round(100 * proxy_cpu_s / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        proxy_processes=proxy_processes,
        rss_kb_peak=rss_kb_peak,
        pss_kb_peak=pss_kb_peak,
        loadgen_cpu_pct=round(100 * loadgen_cpu_s / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        proxy_udp_drops=proxy_udp_drops,
        loadgen_udp_drops=loadgen_udp_drops,
        host_cpu_busy_pct=round(host_busy_pct, 1),
        other_cpu_pct=round(max(0.0, host_busy_pct - 100 * (proxy_cpu_s + loadgen_cpu_s)
                                / elapsed_s), 1) if elapsed_s > 0 else 0.0,
        clean=verdict.clean,
        reasons=list(verdict.reasons),
    )


class _Sampler(threading.Thread):
    """Peak memory of the proxy's process tree, sampled while a step runs."""

    def __init__(self, system: System, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.every = every
        self.rss_peak = 0
        self.pss_peak = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        mem = proc.memory(self.system.pids())
        self.rss_peak = max(self.rss_peak, mem.rss_kb)
        self.pss_peak = max(self.pss_peak, mem.pss_kb)

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.sample()

    def finish(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


Progress = Callable[[float], None]
"""Called with the fraction (0..1) of the step done."""


def run_step(
    system: System,
    rate: float,
    duration: float,
    workdir: Path,
    *,
    sipp_binary: str,
    progress: Progress | None = None,
    recv_timeout_ms: int = 5000,
    drain_s: float = 0.0,
) -> StepResult:
    """Offer `rate` calls/s for `duration` s through `system` (already started).

    A system with several addresses (one per worker) gets one SIPp UAC per address, each at
    an even share of the rate; their counts are added up. With `drain_s`, the proxy's CPU is
    also read for that long after SIPp ends: the work its timers still do for the step's calls
    (transactions and dialogs expiring) shows there.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    targets = system.addresses
    planned = max(1, round(rate * duration))
    shares = split_calls(planned, len(targets))
    uas_port = free_port("udp")
    uas = sipp.SippProcess(
        "uas", sipp.uas_command(sipp_binary, port=uas_port, stat_file="uas_stat.csv"), workdir
    )
    uacs: list[sipp.SippProcess] = []
    try:
        if not proc.wait_udp_bound(uas_port):
            raise RuntimeError(f"SIPp UAS did not bind {uas_port}:\n{uas.output_tail()}")
        pids = system.pids()
        worker_pids = system.worker_pids()
        uac_ports = [free_port("udp") for _ in targets]
        proxy_ports = {port for _, port in targets}
        loadgen_ports = {uas_port, *uac_ports}
        drops0 = proc.udp_drops(proxy_ports)
        cpu0 = proc.cpu_seconds(pids)
        wcpu0 = proc.cpu_seconds(worker_pids) if worker_pids is not None else 0.0
        busy0, total0 = proc.host_cpu_times()
        sampler = _Sampler(system)
        sampler.sample()
        sampler.start()
        t0 = time.monotonic()
        for i, (target, port, calls) in enumerate(zip(targets, uac_ports, shares, strict=True)):
            name = "uac" if len(targets) == 1 else f"uac{i}"
            uacs.append(sipp.SippProcess(
                name,
                sipp.uac_command(
                    sipp_binary, uas=("127.0.0.1", uas_port), proxy=target,
                    local_port=port, rate=rate * calls / planned, calls=calls,
                    stat_file=f"{name}_stat.csv", recv_timeout_ms=recv_timeout_ms,
                    timeout_s=int(duration + 10 + 2 * recv_timeout_ms / 1000),
                ),
                workdir,
            ))
        loadgen = [u.pid for u in uacs] + [uas.pid]
        lg0 = proc.cpu_seconds(loadgen)
        lg_last = lg0
        lg_drops = 0
        deadline = t0 + duration + 30 + 4 * recv_timeout_ms / 1000
        while any(u.poll() is None for u in uacs) and time.monotonic() < deadline:
            time.sleep(0.1)
            lg_last = proc.cpu_seconds(loadgen) or lg_last
            lg_drops = max(lg_drops, proc.udp_drops(loadgen_ports))
            if progress is not None:
                progress(min(1.0, (time.monotonic() - t0) / duration))
        elapsed = time.monotonic() - t0
        # SIPp's UAC socket is gone now; its drops were counted while it ran.
        proxy_drops = proc.udp_drops(proxy_ports) - drops0
        # The last reading of each counter before SIPp exits; the proxy is still alive.
        cpu1 = proc.cpu_seconds(pids)
        wcpu1 = proc.cpu_seconds(worker_pids) if worker_pids is not None else 0.0
        busy1, total1 = proc.host_cpu_times()
        sampler.finish()
        for u in uacs:
            if u.poll() is None:
                u.stop()
            u.wait()
    finally:
        uas.stop()
        for u in uacs:
            if u.poll() is None:
                u.stop()
    drain_cpu = 0.0
    if drain_s > 0:
        time.sleep(drain_s)
        drain_cpu = proc.cpu_seconds(pids) - cpu1
    if progress is not None:
        progress(1.0)
    uac_stats = sipp.sum_stats(sipp.stats_of(workdir / f"{u.name}_stat.csv") for u in uacs)
    uas_stats = sipp.stats_of(workdir / "uas_stat.csv")
    sends = (sipp.sends_per_call(sipp.UAC_SCENARIO.read_text())
             + sipp.sends_per_call(sipp.UAS_SCENARIO.read_text()))
    step = summarize_step(
        offered_rate=rate,
        duration_s=duration,
        planned=planned,
        uac_stats=uac_stats,
        uas_stats=uas_stats,
        rtts=sipp.read_rtts(workdir),
        elapsed_s=elapsed,
        proxy_cpu_s=cpu1 - cpu0,
        proxy_processes=len(pids),
        rss_kb_peak=sampler.rss_peak,
        pss_kb_peak=sampler.pss_peak,
        loadgen_cpu_s=lg_last - lg0,
        host_busy_pct=proc.busy_pct_of_one_core(busy1 - busy0, total1 - total0),
        sends_per_call=sends,
        drain_s=drain_s,
        drain_cpu_s=drain_cpu,
        proxy_udp_drops=proxy_drops,
        loadgen_udp_drops=lg_drops,
    )
    if worker_pids is not None and step.successful_calls:
        step.worker_cpu_ms_per_call = round((wcpu1 - wcpu0) * 1000 / step.successful_calls, 4)
    step.load_generators = len(uacs)
    return step


def split_calls(calls: int, parts: int) -> list[int]:
    """`calls` spread as evenly as possible over `parts` load generators (the first ones get
    one more when it does not divide)."""
    parts = max(1, parts)
    base, extra = divmod(calls, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --- the stepping -----------------------------------------------------------------------------


def highest_clean_rate(steps: Sequence[StepResult]) -> float | None:
    """The highest offered rate whose step was clean and below the first unclean rate.

    Steps run in ascending order and stop at the first unclean one; a retried step counts
    as clean when its retry was.
    """
    by_rate: dict[float, bool] = {}
    for step in steps:
        by_rate[step.offered_rate] = by_rate.get(step.offered_rate, False) or step.clean
    best: float | None = None
    for rate in sorted(by_rate):
        if not by_rate[rate]:
            break
        best = rate
    return best


@dataclass(slots=True)
class SystemRun:
    """The call-rate result of one system."""

    system: dict[str, Any]
    idle_rss_kb: int = 0
    idle_pss_kb: int = 0
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    budget_stopped: bool = False
    """The stepping stopped at the system's time budget, not at an unclean step: its highest
    clean rate is a lower bound."""

    @property
    def max_clean_rate(self) -> float | None:
        return highest_clean_rate(self.steps)

    def step_at(self, rate: float | None) -> StepResult | None:
        """The (last) clean step at `rate`."""
        if rate is None:
            return None
        found = [s for s in self.steps if s.offered_rate == rate and s.clean]
        return found[-1] if found else None

    def to_json(self) -> dict[str, Any]:
        best = self.step_at(self.max_clean_rate)
        return {
            "system": self.system,
            "idle_rss_kb": self.idle_rss_kb,
            "idle_pss_kb": self.idle_pss_kb,
            "max_clean_rate": self.max_clean_rate,
            "at_max_clean_rate": best.to_json() if best else None,
            "steps": [s.to_json() for s in self.steps],
            "error": self.error,
            "budget_stopped": self.budget_stopped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SystemRun:
        return cls(
            system=data.get("system", {}),
            idle_rss_kb=data.get("idle_rss_kb", 0),
            idle_pss_kb=data.get("idle_pss_kb", 0),
            steps=[StepResult.from_json(s) for s in data.get("steps", [])],
            error=data.get("error"),
            budget_stopped=bool(data.get("budget_stopped", False)),
        )


StepHook = Callable[[int, float, int], Progress | None]
"""(step index, rate, attempt) → a progress callback for that step."""
DoneHook = Callable[[StepResult], None]


def run_system(
    system: System,
    rates: Sequence[float],
    duration: float,
    workdir: Path,
    *,
    sipp_binary: str,
    retries: int = 0,
    settle_s: float = 0.5,
    drain_s: float = 0.0,
    on_step: StepHook | None = None,
    on_done: DoneHook | None = None,
    budget_s: float | None = None,
) -> SystemRun:
    """Start `system`, step through `rates` until a step is not clean (after `retries` more
    tries of that rate), stop it. With `budget_s`, no step starts once the system has run that
    long (one more step would pass it); the run says so (`budget_stopped`)."""
    run = SystemRun(system={"name": system.name, "label": system.label})
    began = time.monotonic()
    per_step = duration + 1.5 + drain_s
    try:
        system.start(workdir)
        run.system = system.describe()
        time.sleep(max(settle_s, system.warmup_s))
        mem = proc.memory(system.pids())
        run.idle_rss_kb, run.idle_pss_kb = mem.rss_kb, mem.pss_kb
        for index, rate in enumerate(rates):
            clean = False
            for attempt in range(1, retries + 2):
                if budget_s is not None and time.monotonic() - began + per_step > budget_s:
                    run.budget_stopped = True
                    break
                progress = on_step(index, rate, attempt) if on_step else None
                step = run_step(system, rate, duration,
                                workdir / f"{system.name}-{rate:g}-{attempt}",
                                sipp_binary=sipp_binary, progress=progress,
                                drain_s=drain_s)
                step.attempt = attempt
                run.steps.append(step)
                if on_done:
                    on_done(step)
                if step.clean:
                    clean = True
                    break
                time.sleep(settle_s)
            if not clean or run.budget_stopped:
                break
            time.sleep(settle_s)
    except Exception as exc:  # keep the other systems' results
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        system.stop()
    return run
