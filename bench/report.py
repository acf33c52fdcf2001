"""Results: `bench/results/<timestamp>.json`, a markdown summary and PNG plots.

The JSON is the record; the markdown and the plots are made from the same dict, so a saved
JSON can be rendered again (`python -m bench --render bench/results/<timestamp>.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .callrate import SystemRun
from .render import axes, save

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 2  # 2: the parts beyond call rate (dialogs, callops, events, overload), `parts`

# The numbers to beat (issue 4), with the load generator sharing the machine.
TARGET_CPU_RATIO = 2.0  # switchboard CPU/call within 2x Kamailio's
TARGET_CLEAN_RATE = 1500.0  # clean calls/s end to end
TARGET_BYTES_PER_DIALOG = 3 * 1024  # per held dialog, its stored SDP included
TARGET_WIRE_P99_MS = 5.0  # management command to the REFER / re-INVITE on the wire
REFERENCE = "kamailio"
SUBJECT = "switchboard"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def common_rate(runs: Mapping[str, SystemRun], names: Sequence[str]) -> float | None:
    """The highest rate that was clean for every one of `names` (compare CPU there)."""
    clean_sets = []
    for name in names:
        run = runs.get(name)
        if run is None:
            return None
        best = run.max_clean_rate
        clean_sets.append({s.offered_rate for s in run.steps
                           if s.clean and best is not None and s.offered_rate <= best})
    if not clean_sets:
        return None
    both = set.intersection(*clean_sets)
    return max(both) if both else None


def headline(runs: Mapping[str, SystemRun]) -> dict[str, Any]:
    """Ratios switchboard / Kamailio and where switchboard stands against the targets."""
    out: dict[str, Any] = {"subject": SUBJECT, "reference": REFERENCE}
    sub, ref = runs.get(SUBJECT), runs.get(REFERENCE)
    if sub is not None:
        out["subject_max_clean_rate"] = sub.max_clean_rate
    if sub is None or ref is None:
        return out
    rate = common_rate(runs, [SUBJECT, REFERENCE])
    s_step, r_step = sub.step_at(rate), ref.step_at(rate)
    out["common_rate"] = rate
    out["max_clean_rate"] = {SUBJECT: sub.max_clean_rate, REFERENCE: ref.max_clean_rate,
                             "ratio": ratio(sub.max_clean_rate, ref.max_clean_rate)}
    cpu_s = s_step.cpu_ms_per_call if s_step else None
    cpu_r = r_step.cpu_ms_per_call if r_step else None
    out["cpu_ms_per_call"] = {SUBJECT: cpu_s, REFERENCE: cpu_r, "ratio": ratio(cpu_s, cpu_r)}
    for key, attr in (("rtt_p50_ms", "rtt_p50_ms"), ("rtt_p99_ms", "rtt_p99_ms"),
                      ("pss_kb_peak", "pss_kb_peak")):
        a = getattr(s_step, attr) if s_step else None
        b = getattr(r_step, attr) if r_step else None
        out[key] = {SUBJECT: a, REFERENCE: b, "ratio": ratio(a, b)}
    cpu_ratio = out["cpu_ms_per_call"]["ratio"]
    out["targets"] = {
        "cpu_within_2x_kamailio": None if cpu_ratio is None else cpu_ratio <= TARGET_CPU_RATIO,
        "clean_rate_1500": (None if sub.max_clean_rate is None
                            else sub.max_clean_rate >= TARGET_CLEAN_RATE),
    }
    return out


def build_result(
    *,
    started: str,
    finished: str,
    mode: str,
    settings: dict[str, Any],
    host: dict[str, Any],
    runs: Mapping[str, SystemRun],
    extra: dict[str, Any] | None = None,
    parts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`parts`: the other parts' records by name (dialogs, callops, events, overload)."""
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "started": started,
        "finished": finished,
        "mode": mode,
        "host": host,
        "settings": settings,
        "parts": ["callrate", *(parts or {})] if runs else list(parts or {}),
        "callrate": {name: run.to_json() for name, run in runs.items()},
        "headline": headline(runs),
    }
    for name, data in (parts or {}).items():
        result[name] = data
    result["targets"] = targets(result)
    if extra:
        result.update(extra)
    return result


def targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Where switchboard stands against each number to beat of issue 4: the value, the target
    and whether it is met (None: not measured in this run)."""
    from .dialogs import DialogsRun, best_estimate

    head = result.get("headline", {})
    cpu = head.get("cpu_ms_per_call", {})
    mcr = head.get("subject_max_clean_rate")
    out: dict[str, dict[str, Any]] = {
        "cpu_within_2x_kamailio": {
            "value": cpu.get("ratio"), "target": TARGET_CPU_RATIO,
            "met": None if cpu.get("ratio") is None else cpu["ratio"] <= TARGET_CPU_RATIO,
            "at_rate": head.get("common_rate")},
        "clean_rate_1500": {
            "value": mcr, "target": TARGET_CLEAN_RATE,
            "met": None if mcr is None else mcr >= TARGET_CLEAN_RATE},
    }
    dialogs = result.get("dialogs", {}).get("runs", {}).get(SUBJECT)
    per = best_estimate(DialogsRun.from_json(dialogs)) if dialogs else None
    heap = result.get("dialogs", {}).get("heap", {}) or {}
    out["bytes_per_dialog_3k"] = {
        "value": per, "target": TARGET_BYTES_PER_DIALOG,
        "met": None if per is None else per <= TARGET_BYTES_PER_DIALOG,
        "core_heap_bytes_per_dialog": heap.get("heap_bytes_per_dialog")}
    steady = [p for p in result.get("callops", {}).get("phases", []) if p.get("offered_rate")]
    p99s = [p["wire"]["p99_ms"] for p in steady if p["wire"].get("p99_ms") is not None]
    worst = max(p99s) if p99s else None
    out["command_to_wire_p99_5ms"] = {
        "value": worst, "target": TARGET_WIRE_P99_MS,
        "met": None if worst is None else worst < TARGET_WIRE_P99_MS}
    return out


def runs_of(result: Mapping[str, Any]) -> dict[str, SystemRun]:
    return {name: SystemRun.from_json(data) for name, data in result.get("callrate", {}).items()}


# --- formatting -------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = "{:.0f}", none: str = "—") -> str:
    return none if value is None else fmt.format(value)


def _mb(kb: float | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _met(flag: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[flag]


def markdown(result: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    runs = runs_of(result)
    head = result.get("headline", {})
    host = result.get("host", {})
    settings = result.get("settings", {})
    lines = [
        f"# switchboard bench — {result.get('started', '')}",
        "",
        f"Mode **{result.get('mode')}**, {settings.get('duration_s')} s per step, offered rates "
        f"{', '.join(_num(r) for r in settings.get('rates', []))} calls/s. "
        f"Host: {host.get('cpus')} CPUs, {host.get('cpu_model', '?')}, "
        f"Linux {host.get('kernel', '?')}, Python {host.get('python', '?')}, "
        f"SIPp {host.get('sipp', '?')}. Load generator (SIPp UAC + UAS) on the same cores. "
        f"switchboard's SIP core: {host.get('switchboard_core', '?')}.",
        "",
    ]
    background = host.get("background_busy_pct")
    if background is not None:
        lines += [f"Other work on the machine just before the run: {background:.0f} % of one "
                  "core" + (" — **the machine was not quiet; numbers are skewed**"
                            if background > 20 else "") + ".", ""]
    versions = ", ".join(
        f"{run.system.get('label', name)} {run.system.get('version', '')}".strip()
        for name, run in runs.items()
    )
    if versions:
        lines += [f"Systems: {versions}.", ""]

    if SUBJECT in runs and REFERENCE in runs:
        rate = head.get("common_rate")
        lines += [
            "## Headline: switchboard / Kamailio",
            "",
            "| | switchboard | Kamailio | ratio |",
            "|---|---:|---:|---:|",
        ]
        mcr = head.get("max_clean_rate", {})
        lines.append(f"| highest clean rate (calls/s) | {_num(mcr.get(SUBJECT))} | "
                     f"{_num(mcr.get(REFERENCE))} | {_x(mcr.get('ratio'))} |")
        at = f" at {_num(rate)} calls/s" if rate is not None else ""
        cpu = head.get("cpu_ms_per_call", {})
        lines.append(f"| proxy CPU ms per call{at} | {_num(cpu.get(SUBJECT), '{:.3f}')} | "
                     f"{_num(cpu.get(REFERENCE), '{:.3f}')} | {_x(cpu.get('ratio'))} |")
        for key, label in (("rtt_p50_ms", "p50 INVITE→200 ms"),
                           ("rtt_p99_ms", "p99 INVITE→200 ms")):
            row = head.get(key, {})
            lines.append(f"| {label}{at} | {_num(row.get(SUBJECT), '{:g}')} | "
                         f"{_num(row.get(REFERENCE), '{:g}')} | {_x(row.get('ratio'))} |")
        pss = head.get("pss_kb_peak", {})
        lines.append(f"| memory, PSS MB (peak{at}) | {_mb(pss.get(SUBJECT))} | "
                     f"{_mb(pss.get(REFERENCE))} | {_x(pss.get('ratio'))} |")
        targets = head.get("targets", {})
        lines += [
            "",
            "Against the numbers to beat (issue 4):",
            "",
            f"- CPU per call within {TARGET_CPU_RATIO:g}x Kamailio's: "
            f"{_x(cpu.get('ratio'))} — {_met(targets.get('cpu_within_2x_kamailio'))}",
            f"- at least {TARGET_CLEAN_RATE:,.0f} clean calls/s: "
            f"{_num(mcr.get(SUBJECT))} — {_met(targets.get('clean_rate_1500'))}",
            "",
        ]

    for name, run in runs.items():
        lines += [f"## Call rate — {run.system.get('label', name)}", ""]
        if run.error:
            lines += [f"**Error:** `{run.error}`", ""]
        lines += [
            f"Highest clean rate: **{_num(run.max_clean_rate)} calls/s**"
            + (" (the system's time budget ended the stepping: a lower bound)"
               if run.budget_stopped else "") + ". "
            f"Idle memory: PSS {_mb(run.idle_pss_kb)} MB, RSS {_mb(run.idle_rss_kb)} MB "
            f"({run.steps[0].proxy_processes if run.steps else '?'} processes).",
            "",
            "| offered /s | completed /s | calls ok | failed | retrans % | p50 ms | p99 ms "
            "| CPU ms/call | proxy CPU % | SIPp CPU % | other CPU % | UDP drops proxy/SIPp "
            "| PSS MB | RSS MB | clean |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in run.steps:
            verdict = "yes" if s.clean else "no: " + "; ".join(s.reasons)
            if s.attempt > 1:
                verdict += f" (try {s.attempt})"
            lines.append(
                f"| {_num(s.offered_rate)} | {_num(s.completed_rate)} | {s.successful_calls} "
                f"| {s.failed_calls} | {100 * s.retrans_ratio:.2f} "
                f"| {_num(s.rtt_p50_ms, '{:g}')} | {_num(s.rtt_p99_ms, '{:g}')} "
                f"| {_num(s.cpu_ms_per_call, '{:.3f}')} | {s.proxy_cpu_pct:.0f} "
                f"| {s.loadgen_cpu_pct:.0f} | {s.other_cpu_pct:.0f} "
                f"| {s.proxy_udp_drops}/{s.loadgen_udp_drops} "
                f"| {_mb(s.pss_kb_peak)} | {_mb(s.rss_kb_peak)} | {verdict} |"
            )
        lines.append("")
        workers = [(s.offered_rate, s.worker_cpu_ms_per_call) for s in run.steps
                   if s.worker_cpu_ms_per_call is not None]
        if workers:
            lines += ["CPU ms/call above counts every process of the runtime (Ray's GCS, "
                      "raylet, agents and the worker actors); the worker actors alone: "
                      + ", ".join(f"{_num(r)}/s: {w:.3f}" for r, w in workers) + ". "
                      f"Load offered by {run.steps[0].load_generators} SIPp UACs, one per "
                      "worker port.", ""]

    lines += parts_markdown(result)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    lines += [
        "Clean step: no failed or unfinished call, retransmissions under "
        f"{100 * settings.get('max_retrans_ratio', 0.01):g} % of the messages SIPp sent, "
        f"completed calls/s at least {100 * settings.get('min_rate_ratio', 0.9):g} % of "
        "offered. CPU ms/call: the proxy's user+system CPU (all its processes, /proc) while "
        "SIPp ran, divided by successful calls. CPU % columns are of one core (200 % = two "
        "cores); other = the rest of the machine meanwhile. UDP drops: datagrams the kernel "
        "dropped because a socket's receive buffer was full (/proc/net/udp). p50/p99: SIPp's "
        "`invite` response-time timer (INVITE sent → 200 received, whole milliseconds). "
        "PSS/RSS: peak sum over the proxy's processes. See bench/README.md.",
        "",
    ]
    return "\n".join(lines)


def targets_markdown(result: Mapping[str, Any]) -> list[str]:
    t = result.get("targets") or targets(result)
    if not any(v.get("met") is not None for v in t.values()):
        return []

    def row(label: str, key: str, fmt: str) -> str:
        v = t.get(key, {})
        value = "—" if v.get("value") is None else fmt.format(v["value"])
        return f"| {label} | {value} | {_met(v.get('met'))} |"

    heap = t.get("bytes_per_dialog_3k", {}).get("core_heap_bytes_per_dialog")
    rate = t.get("cpu_within_2x_kamailio", {}).get("at_rate")
    lines = [
        "## All the numbers to beat (issue 4)",
        "",
        "| target | switchboard | |",
        "|---|---:|---|",
        row(f"CPU per call within {TARGET_CPU_RATIO:g}x Kamailio's"
            + (f" (at {rate:g} calls/s)" if rate else ""), "cpu_within_2x_kamailio",
            "{:.2f}x"),
        row(f"at least {TARGET_CLEAN_RATE:,.0f} clean calls/s", "clean_rate_1500", "{:,.0f}"),
        row(f"at most {TARGET_BYTES_PER_DIALOG:,} bytes per held dialog (process PSS; marginal "
            "at the largest size when measured)",
            "bytes_per_dialog_3k", "{:,.0f}"),
        row(f"command-to-wire p99 under {TARGET_WIRE_P99_MS:g} ms", "command_to_wire_p99_5ms",
            "{:g} ms"),
        "",
    ]
    if heap is not None:
        lines += [f"The proxy core itself keeps {heap:,.0f} bytes per held dialog (Python heap "
                  "counted by tracemalloc, SDP included; see Dialogs held).", ""]
    return lines


def parts_markdown(result: Mapping[str, Any]) -> list[str]:
    """The sections of the parts beyond call rate that are in `result`."""
    from . import callops, dialogs, events, overload, tls

    lines = targets_markdown(result)
    if "dialogs" in result:
        lines += dialogs.markdown(result["dialogs"])
    if "callops" in result:
        lines += callops.markdown(result["callops"])
    if "events" in result:
        sb = runs_of(result).get(SUBJECT)
        without = ({s.offered_rate: s.cpu_ms_per_call for s in sb.steps
                    if s.cpu_ms_per_call is not None} if sb else {})
        lines += events.markdown(result["events"], without)
    if "overload" in result:
        lines += overload.markdown(result["overload"])
    if "tls" in result:
        lines += tls.markdown(result["tls"])
    return lines


def plot(result: Mapping[str, Any], stem: Path) -> list[Path]:
    """PNGs next to `stem`: offered vs completed calls/s and CPU ms per call (when the
    call-rate part ran), memory per dialog, the overload curve."""
    from . import dialogs, overload

    written: list[Path] = []
    if result.get("callrate"):
        written += _plot_callrate(result, stem)
    if result.get("dialogs"):
        written += dialogs.plot(result["dialogs"], stem)
    if result.get("overload"):
        written += overload.plot(result["overload"], stem)
    return written


def _plot_callrate(result: Mapping[str, Any], stem: Path) -> list[Path]:
    runs = runs_of(result)
    fig, ax = axes()
    top = 0.0
    for name, run in runs.items():
        xs = [s.offered_rate for s in run.steps]
        ys = [s.completed_rate for s in run.steps]
        if not xs:
            continue
        top = max(top, *xs, *ys)
        line = ax.plot(xs, ys, marker="o", label=run.system.get("label", name))[0]
        bad = [(s.offered_rate, s.completed_rate) for s in run.steps if not s.clean]
        if bad:
            bx, by = zip(*bad, strict=True)
            ax.scatter(bx, by, marker="x", s=80, color=line.get_color(), zorder=3)
    if top:
        ax.plot([0, top], [0, top], linestyle=":", color="grey", label="completed = offered")
    written = [save(fig, ax, stem, "callrate", xlabel="offered calls/s",
                    ylabel="completed calls/s", title="Call rate (x = step not clean)")]

    fig, ax = axes()
    for name, run in runs.items():
        pts = [(s.offered_rate, s.cpu_ms_per_call) for s in run.steps
               if s.cpu_ms_per_call is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=run.system.get("label", name))
    ax.set_ylim(bottom=0)
    written.append(save(fig, ax, stem, "cpu", xlabel="offered calls/s",
                        ylabel="proxy CPU ms per call",
                        title="Proxy CPU per call (all its processes)"))
    return written


def write(result: Mapping[str, Any], directory: Path, stamp: str, *,
          plots: bool = True) -> dict[str, Path]:
    """Write `<stamp>.json`, `<stamp>.md` and (matplotlib permitting) the PNGs."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / stamp
    paths: dict[str, Path] = {"json": stem.with_suffix(".json")}
    paths["json"].write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    pngs: list[Path] = []
    if plots:
        try:
            pngs = plot(result, stem)
        except ImportError:
            pngs = []
    for i, png in enumerate(pngs):
        paths[f"png{i}"] = png
    paths["md"] = stem.with_suffix(".md")
    paths["md"].write_text(markdown(result, [str(p) for p in pngs]))
    return paths
