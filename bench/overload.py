"""Overload: offered load stepped up to about twice the highest clean rate, then back down.

switchboard refuses a growing share of new INVITEs with a stateless 503 + Retry-After while a
backlog stands in its receive queue (or the kernel drops datagrams, or its event loop runs late:
switchboard/actors/overload.py), so that the calls it does take complete instead of every call
timing out. One switchboard (local runtime) takes every step:

- steps at fractions of the highest clean rate R (from the call-rate part of the same run,
  `--max-rate`, or a quick search of 3 s steps), up to 2 R;
- then recovery steps at clean rates (0.5 R ...): the proxy must be clean again by itself;
- meanwhile, established calls: long calls placed before the ramp hang up (BYE) in the middle
  of the top step, and must all complete.

The UAC scenario (scenarios/uac_overload.xml) takes a 503 as an outcome: it ACKs it, logs
`shed <Retry-After> <ms since SIPp started>`, and ends the call. Per step: offered calls/s,
calls completed (SIPp's successful calls minus the shed ones) and their rate, 503s answered
(and how many carried Retry-After), failed calls (no final answer within the receive timeout,
or any other failure: what overload control is there to avoid), retransmissions, INVITE→200
p50/p99 of the completed calls, CPU. A step is clean when nothing failed, nothing was shed and
retransmissions stayed under 1 %.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import callrate, proc, sipp
from .load import Uacs, Uas, failure, stop_all
from .render import axes, save, section
from .systems import Switchboard

QUICK_FRACTIONS = (1.0, 1.5, 2.0)
FULL_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
RECOVERY_FRACTIONS = (0.5,)
SEARCH_RATES = (300, 600, 900, 1200, 1500, 2000, 2500)
_SHED = re.compile(r"^shed\s+(\S*)\s+(\d+)")


@dataclass(slots=True)
class OverloadStep:
    phase: str  # ramp | recovery
    offered_rate: float
    duration_s: float
    planned_calls: int
    started: int = 0  # calls SIPp placed
    completed: int = 0  # put through: INVITE … BYE 200
    shed: int = 0  # answered 503
    shed_with_retry_after: int = 0
    failed: int = 0  # UAC + UAS failures (timeouts, unexpected messages)
    unfinished: int = 0  # placed but neither completed, shed nor failed when SIPp stopped
    retransmissions: int = 0
    retrans_ratio: float = 0.0
    elapsed_s: float = 0.0
    completed_rate: float = 0.0
    shed_rate: float = 0.0
    last_shed_s: float | None = None  # seconds into the step of the last 503
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    proxy_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    proxy_udp_drops: int = 0
    proxy_shed_counter: int = 0  # the proxy's own core:shed_requests growth
    t_start_s: float = 0.0  # when the step began, seconds after the established calls did
    clean: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_shed_log(lines: Sequence[str]) -> tuple[int, int, float | None]:
    """(503s, 503s with a Retry-After value, ms since SIPp started of the last one)."""
    shed = with_ra = 0
    last: float | None = None
    for line in lines:
        m = _SHED.match(line.strip())
        if not m:
            continue
        shed += 1
        if m.group(1).isdigit():
            with_ra += 1
        tick = float(m.group(2))
        last = tick if last is None else max(last, tick)
    return shed, with_ra, last


def summarize(step: OverloadStep, *, uac_stats: dict[str, str], uas_stats: dict[str, str],
              shed_lines: Sequence[str], rtts: Sequence[float]) -> OverloadStep:
    """A step's numbers from SIPp's statistics and log (pure)."""
    successful = sipp.stat_int(uac_stats, "SuccessfulCall(C)")
    uac_failed = sipp.stat_int(uac_stats, "FailedCall(C)")
    step.started = sipp.stat_int(uac_stats, "OutgoingCall(C)")
    step.shed, step.shed_with_retry_after, last_ms = parse_shed_log(shed_lines)
    step.last_shed_s = round(last_ms / 1000, 2) if last_ms is not None else None
    step.completed = max(0, successful - step.shed)
    step.failed = uac_failed + sipp.stat_int(uas_stats, "FailedCall(C)")
    step.unfinished = max(0, step.planned_calls - successful - uac_failed)
    step.retransmissions = (sipp.stat_int(uac_stats, "Retransmissions(C)")
                            + sipp.stat_int(uas_stats, "Retransmissions(C)"))
    messages = step.completed * 6 + step.shed * 2
    step.retrans_ratio = round(step.retransmissions / messages, 4) if messages else 0.0
    if step.elapsed_s > 0:
        step.completed_rate = round(step.completed / step.elapsed_s, 1)
        step.shed_rate = round(step.shed / step.elapsed_s, 1)
    step.rtt_p50_ms = sipp.percentile(rtts, 50)
    step.rtt_p99_ms = sipp.percentile(rtts, 99)
    reasons = []
    if step.failed:
        reasons.append(f"{step.failed} failed")
    if step.unfinished:
        reasons.append(f"{step.unfinished} unfinished")
    if step.shed:
        reasons.append(f"{step.shed} shed (503)")
    if step.retrans_ratio >= callrate.MAX_RETRANS_RATIO:
        reasons.append(f"retransmissions {step.retrans_ratio:.1%}")
    step.clean, step.reasons = not reasons, reasons
    return step


def plan_rates(max_rate: float, fractions: Sequence[float],
               recovery: Sequence[float] = RECOVERY_FRACTIONS) -> list[tuple[str, float]]:
    """(phase, offered rate) of every step: the ramp, then the recovery steps (pure)."""
    steps = [("ramp", round(max_rate * f)) for f in fractions]
    steps += [("recovery", round(max_rate * f)) for f in recovery]
    return [(phase, float(max(1, rate))) for phase, rate in steps]


Say = Callable[[str], None]


def search_max_rate(system: Switchboard, workdir: Path, *, sipp_binary: str,
                    say: Say) -> float | None:
    """The highest clean rate of 3 s call-rate steps (a short version of the call-rate part)."""
    best: float | None = None
    for rate in SEARCH_RATES:
        step = callrate.run_step(system, rate, 3.0, workdir / f"search-{rate}",
                                 sipp_binary=sipp_binary)
        say(f"  overload search {rate:g}/s: {'clean' if step.clean else 'not clean'}")
        if not step.clean:
            break
        best = float(rate)
        time.sleep(1.0)
    return best


def run(workdir: Path, *, sipp_binary: str, max_rate: float | None, fractions: Sequence[float],
        duration: float, recovery: Sequence[float] = RECOVERY_FRACTIONS, gap_s: float = 1.0,
        established_calls: int = 100, say: Say = print) -> dict[str, Any]:
    system = Switchboard()
    out: dict[str, Any] = {"system": {"name": system.name, "label": system.label},
                           "settings": {"duration_s": duration, "fractions": list(fractions),
                                        "recovery": list(recovery), "gap_s": gap_s,
                                        "established_calls": established_calls},
                           "steps": [], "established": {}, "error": None}
    uas_long: Uas | None = None
    long: Uacs | None = None
    try:
        system.start(workdir)
        out["system"] = system.describe()
        time.sleep(system.warmup_s)
        source = "given"
        if max_rate is None:
            max_rate = search_max_rate(system, workdir, sipp_binary=sipp_binary, say=say)
            source = "searched"
            time.sleep(3.0)  # let the search's load go
        if not max_rate:
            raise RuntimeError("no clean rate to start from")
        out["settings"]["max_rate"] = max_rate
        out["settings"]["max_rate_source"] = source
        steps = plan_rates(max_rate, fractions, recovery)
        # Established calls: up before the ramp, BYE in the middle of the top step.
        ramp = [r for p, r in steps if p == "ramp"]
        top_index = ramp.index(max(ramp))
        hold_s = (top_index + 0.5) * (duration + gap_s + 1.5) + 2.0
        if established_calls:
            uas_long = Uas(sipp_binary, workdir / "established",
                           timeout_s=int(hold_s + len(steps) * (duration + 40) + 60))
            long = Uacs(sipp_binary, system, workdir / "established", name="established",
                        uas=uas_long, rate=min(200.0, established_calls), calls=established_calls,
                        scenario=sipp.UAC_LONG_SCENARIO, extra=["-d", str(int(hold_s * 1000))],
                        limit=established_calls + 10, recv_timeout_ms=10000,
                        timeout_s=int(hold_s + len(steps) * (duration + 40) + 60))
            time.sleep(established_calls / min(200.0, established_calls) + 0.5)
        origin = time.monotonic()
        if established_calls:
            origin -= established_calls / min(200.0, established_calls) + 0.5
        for phase, rate in steps:
            t_start = round(time.monotonic() - origin, 2)
            step = run_step(system, phase, rate, duration,
                            workdir / f"{phase}-{rate:g}", sipp_binary=sipp_binary)
            step.t_start_s = t_start
            out["steps"].append(step.to_json())
            say(step_line(step))
            time.sleep(gap_s)
        if long is not None:
            long.wait(max(0.0, hold_s) + 30)
            st = long.stats()
            top = next((st_ for st_ in out["steps"] if st_["offered_rate"] == max(ramp)), None)
            out["established"] = {
                "calls": established_calls,
                "bye_in_top_step": (top is not None and top["t_start_s"] <= hold_s
                                    <= top["t_start_s"] + top["elapsed_s"]),
                "completed": sipp.stat_int(st, "SuccessfulCall(C)"),
                "failed": sipp.stat_int(st, "FailedCall(C)"),
                "retransmissions": sipp.stat_int(st, "Retransmissions(C)"),
                "bye_at_s": round(hold_s, 1),
            }
            say(f"  overload established calls: {out['established']}")
    except Exception as exc:
        out["error"] = failure(exc)
    finally:
        stop_all(system, long, uas_long)
    return out


def run_step(system: Switchboard, phase: str, rate: float, duration: float, workdir: Path, *,
             sipp_binary: str, recv_timeout_ms: int = 5000) -> OverloadStep:
    planned = max(1, round(rate * duration))
    step = OverloadStep(phase=phase, offered_rate=rate, duration_s=duration,
                        planned_calls=planned)
    uas = Uas(sipp_binary, workdir, timeout_s=int(duration + 60))
    try:
        pids = system.pids()
        shed0 = system.statistics("core:shed_requests").get("core:shed_requests", 0) \
            if _has_stat(system, "core:shed_requests") else 0
        drops0 = proc.udp_drops({system.address[1]})
        cpu0 = proc.cpu_seconds(pids)
        busy0, total0 = proc.host_cpu_times()
        t0 = time.monotonic()
        uac = Uacs(sipp_binary, system, workdir, name="uac", uas=uas, rate=rate, calls=planned,
                   scenario=sipp.UAC_OVERLOAD_SCENARIO, extra=["-trace_logs"],
                   recv_timeout_ms=recv_timeout_ms,
                   timeout_s=int(duration + 10 + 2 * recv_timeout_ms / 1000))
        loadgen = [*uac.pids, uas.proc.pid]
        lg0 = proc.cpu_seconds(loadgen)
        lg_last = lg0
        deadline = t0 + duration + 30 + 4 * recv_timeout_ms / 1000
        while uac.running() and time.monotonic() < deadline:
            time.sleep(0.1)
            lg_last = proc.cpu_seconds(loadgen) or lg_last
        elapsed = time.monotonic() - t0
        cpu1 = proc.cpu_seconds(pids)
        busy1, total1 = proc.host_cpu_times()
        step.proxy_udp_drops = proc.udp_drops({system.address[1]}) - drops0
        uac.stop()
        uac.wait(5)
    finally:
        uas.stop()
    step.elapsed_s = round(elapsed, 3)
    step.proxy_cpu_pct = round(100 * (cpu1 - cpu0) / elapsed, 1) if elapsed else 0.0
    step.loadgen_cpu_pct = round(100 * (lg_last - lg0) / elapsed, 1) if elapsed else 0.0
    host = proc.busy_pct_of_one_core(busy1 - busy0, total1 - total0)
    step.other_cpu_pct = round(max(0.0, host - step.proxy_cpu_pct - step.loadgen_cpu_pct), 1)
    with_shed = system.statistics("core:shed_requests").get("core:shed_requests", 0) \
        if _has_stat(system, "core:shed_requests") else 0
    step.proxy_shed_counter = with_shed - shed0
    return summarize(step, uac_stats=uac.stats(), uas_stats=uas.stats(), shed_lines=uac.logs(),
                     rtts=sipp.read_rtts(workdir))


def _has_stat(system: Switchboard, name: str) -> bool:
    try:
        return name in system.statistics("all")
    except Exception:
        return False


def step_line(s: OverloadStep) -> str:
    verdict = "[green]clean[/]" if s.clean else "not clean: " + "; ".join(s.reasons)
    last = f", last 503 at {s.last_shed_s} s" if s.last_shed_s is not None else ""
    return (f"  overload {s.phase:<8} {s.offered_rate:>6.0f}/s offered: {s.completed_rate:>7.1f}"
            f"/s completed, {s.shed} shed ({s.shed_rate:.0f}/s, {s.shed_with_retry_after} with "
            f"Retry-After{last}), {s.failed} failed, {s.unfinished} unfinished, retrans "
            f"{100 * s.retrans_ratio:.2f}%, p50/p99 {s.rtt_p50_ms}/{s.rtt_p99_ms} ms, proxy CPU "
            f"{s.proxy_cpu_pct:.0f}% (SIPp {s.loadgen_cpu_pct:.0f}%, other "
            f"{s.other_cpu_pct:.0f}%)  {verdict}")


# --- report -----------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> list[str]:
    st = data.get("settings", {})
    lines = section(
        "## Overload",
        [f"One switchboard (local runtime), {st.get('duration_s')} s steps of short calls at "
         f"fractions of R = {st.get('max_rate', '?')} calls/s (highest clean rate, "
         f"{st.get('max_rate_source', '?')}) up to 2 R, then recovery steps. The caller takes "
         "a 503 as an outcome (ACK, end of call). Failed = no final answer in 5 s or another "
         "failure. Clean = nothing failed, nothing shed, retransmissions under 1 %."],
        data.get("error"),
        "| phase | offered /s | completed /s | completed | 503 | 503 with Retry-After "
        "| last 503 at s | failed | unfinished | retrans % | p50 ms | p99 ms | proxy CPU % "
        "| SIPp CPU % | other CPU % | clean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    for s in data.get("steps", []):
        verdict = "yes" if s["clean"] else "no: " + "; ".join(s["reasons"])
        lines.append(
            f"| {s['phase']} | {s['offered_rate']:g} | {s['completed_rate']:.0f} "
            f"| {s['completed']} | {s['shed']} | {s['shed_with_retry_after']} "
            f"| {s['last_shed_s'] if s['last_shed_s'] is not None else '—'} | {s['failed']} "
            f"| {s['unfinished']} | {100 * s['retrans_ratio']:.2f} "
            f"| {_v(s['rtt_p50_ms'])} | {_v(s['rtt_p99_ms'])} | {s['proxy_cpu_pct']:.0f} "
            f"| {s['loadgen_cpu_pct']:.0f} | {s['other_cpu_pct']:.0f} | {verdict} |")
    est = data.get("established") or {}
    lines.append("")
    if est:
        where = ("in the top step" if est.get("bye_in_top_step")
                 else "not inside the top step")
        lines.append(f"- established calls (up before the ramp, BYE at {est.get('bye_at_s')} s, "
                     f"{where}): {est.get('completed')}/{est.get('calls')} completed, "
                     f"{est.get('failed')} failed, {est.get('retransmissions')} "
                     "retransmissions")
    rec = [s for s in data.get("steps", []) if s["phase"] == "recovery"]
    if rec:
        parts = "; ".join(
            f"{s['offered_rate']:g}/s: " + ("clean" if s["clean"] else ", ".join(s["reasons"])
                                            + (f", the last 503 {s['last_shed_s']} s into it"
                                               if s["last_shed_s"] is not None else ""))
            for s in rec)
        lines.append(f"- recovery ({st.get('gap_s')} s after the top step): "
                     f"{recovery_verdict(rec)} ({parts})")
    lines.append("")
    return lines


def recovery_verdict(rec: Sequence[dict[str, Any]]) -> str:
    """Clean again, clean again after a while (503s only early in the first recovery step,
    nothing failed, the later steps clean), or not (pure)."""
    if not rec:
        return "not measured"
    if all(s["clean"] for s in rec):
        return "clean again"
    first, rest = rec[0], rec[1:]
    only_shed = not first["failed"] and not first["unfinished"] and all(
        "shed" in r for r in first["reasons"])
    if only_shed and first["last_shed_s"] is not None and \
            first["last_shed_s"] < first["duration_s"] / 2 and all(s["clean"] for s in rest):
        return f"clean again after {first['last_shed_s']:g} s of shedding"
    return "**not clean**"


def _v(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def plot(data: dict[str, Any], stem: Path) -> list[Path]:
    steps = list(data.get("steps", []))
    if not steps:
        return []
    ramp = [s for s in steps if s["phase"] == "ramp"]
    rec = [s for s in steps if s["phase"] == "recovery"]
    fig, ax = axes(width=7.5)
    x = [s["offered_rate"] for s in ramp]
    ax.plot(x, [s["completed_rate"] for s in ramp], marker="o", label="completed calls/s")
    ax.plot(x, [s["shed_rate"] for s in ramp], marker="s", label="503 answered /s")
    ax.plot(x, [s["failed"] / s["elapsed_s"] if s["elapsed_s"] else 0 for s in ramp],
            marker="x", label="failed calls/s")
    if rec:
        ax.scatter([s["offered_rate"] for s in rec], [s["completed_rate"] for s in rec],
                   marker="*", s=150, color="green", zorder=3, label="recovery: completed/s")
    top = max(x + [s["completed_rate"] for s in ramp])
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="completed = offered")
    mr = data.get("settings", {}).get("max_rate")
    if mr:
        ax.axvline(mr, linestyle="--", color="grey", alpha=0.6, label=f"highest clean ({mr:g})")
    return [save(fig, ax, stem, "overload", xlabel="offered calls/s", ylabel="calls/s",
                 title="switchboard under overload (503 + Retry-After shedding)",
                 legend_size=8)]
