"""`python -m bench`: run the suite, show progress, write the results.

The parts, in the order they run (`--only` picks some): call rate (every system), dialogs held
(switchboard and Kamailio), call operations under load, events, overload (switchboard); on
request (`--only tls`, not in the default runs, whose time budgets it would pass) TLS and
WebSocket (switchboard and Kamailio). The soak is separate: `python -m bench.soak`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import switchboard
from tests.support.sipp import sipp_binary

from . import callops, callrate, dialogs, events, overload, proc, report, sipp, systems, tls

# Offered rates (calls/s) and seconds per step.
QUICK_RATES = (500, 1000, 1500, 2000, 3000, 4000, 5000)
QUICK_DURATION = 5.0
FULL_RATES = (200, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000, 5000, 6000)
FULL_DURATION = 15.0
# Longest a system's call-rate stepping may run (no step starts that would pass it), so that
# the whole suite stays under 3 minutes (--quick) or 30 (full) whatever the systems do.
QUICK_BUDGET_S = 38.0
FULL_BUDGET_S = 225.0

PARTS = ("callrate", "dialogs", "callops", "events", "overload")
# Run only when asked for (`--only`): with them the runs would pass their 3 and 30 minutes.
ON_REQUEST = ("tls",)
TLS_SYSTEMS = ("switchboard", "kamailio")
QUICK_SYSTEMS = "switchboard,kamailio"
FULL_SYSTEMS = "switchboard,switchboard-ray-1,switchboard-ray-2,kamailio"
DIALOG_SYSTEMS = ("switchboard", "kamailio")  # the Ray runtime's dialogs are per worker


@dataclass(frozen=True, slots=True)
class PartsPlan:
    """What the parts beyond call rate do in this mode (see each module)."""

    dialog_sizes: tuple[int, ...]
    dialog_rate: float
    dialog_settle: bool
    heap_dialogs: int
    callops_long_calls: int
    callops_background_rate: float
    callops_measured_calls: int
    callops_rates: tuple[float, ...]
    callops_seconds: float
    callops_burst_s: float
    events_rates: tuple[float, ...]
    events_duration: float
    overload_fractions: tuple[float, ...]
    overload_recovery: tuple[float, ...]
    overload_duration: float
    max_rate: float | None
    tls_rates: tuple[float, ...] = tls.RATES
    tls_duration: float = tls.DURATION_S
    tls_connections: int = tls.CONNECTIONS

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def estimate_seconds(self, parts: Sequence[str], dialog_systems: int = 2) -> float:
        """About how long the parts beyond call rate take (they end on their own clocks)."""
        total = 0.0
        if "dialogs" in parts:
            per = (max(self.dialog_sizes, default=0) / self.dialog_rate
                   + len(self.dialog_sizes) * ((35.0 if self.dialog_settle else 0.0) + 3.0)
                   + sum(self.dialog_sizes) / 40_000 + 3.0)
            total += dialog_systems * per + self.heap_dialogs * 0.002 + 2.0
        if "callops" in parts:
            total += (self.callops_long_calls / 1000 + len(self.callops_rates)
                      * (self.callops_seconds + 1.0) + self.callops_burst_s + 10.0)
        if "events" in parts:
            total += len(self.events_rates) * (self.events_duration + 2.0) + 3.0
        if "overload" in parts:
            steps = len(self.overload_fractions) + len(self.overload_recovery)
            total += steps * (self.overload_duration + 2.5) + 6.0
            if self.max_rate is None and "callrate" not in parts:
                total += 30.0
        if "tls" in parts:
            total += self.tls_plan(TLS_SYSTEMS).estimate_seconds()
        return total

    def tls_plan(self, names: Sequence[str], kamailio_children: int | None = None
                 ) -> tls.Plan:
        return tls.Plan(rates=self.tls_rates, duration=self.tls_duration,
                        systems=tuple(names), connections=self.tls_connections,
                        kamailio_children=kamailio_children)


def make_parts_plan(args: argparse.Namespace) -> PartsPlan:
    quick = bool(args.quick)

    def floats(text: str | None, default: Sequence[float]) -> tuple[float, ...]:
        if not text:
            return tuple(float(x) for x in default)
        return tuple(float(x) for x in text.split(",") if x.strip())

    sizes = (tuple(int(float(x)) for x in args.dialogs.split(",") if x.strip())
             if args.dialogs else ((10_000,) if quick else (10_000, 50_000, 100_000)))
    return PartsPlan(
        dialog_sizes=sizes,
        dialog_rate=args.dialogs_rate,
        dialog_settle=(not quick) if args.dialogs_settle is None else args.dialogs_settle,
        heap_dialogs=1_000 if quick else 10_000,
        callops_long_calls=args.long_calls if args.long_calls is not None else 2_000,
        callops_background_rate=args.background_rate,
        callops_measured_calls=50 if quick else 100,
        callops_rates=floats(args.callops_rates, (100,) if quick else (50, 100, 200)),
        callops_seconds=args.callops_seconds or (4.0 if quick else 20.0),
        callops_burst_s=2.0 if quick else 10.0,
        events_rates=floats(args.events_rates,
                            (500, 1000) if quick else (200, 500, 1000, 1500)),
        events_duration=3.0 if quick else 10.0,
        overload_fractions=(overload.QUICK_FRACTIONS if quick else overload.FULL_FRACTIONS),
        overload_recovery=(0.5,) if quick else (0.5, 1.0),
        overload_duration=args.overload_duration or (3.0 if quick else 15.0),
        max_rate=args.max_rate,
        tls_rates=floats(args.tls_rates, tls.RATES),
        tls_duration=args.tls_duration or (5.0 if quick else tls.DURATION_S),
        tls_connections=(args.tls_connections if args.tls_connections is not None
                         else tls.CONNECTIONS),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    systems: tuple[str, ...]
    rates: tuple[float, ...]
    duration: float
    retries: int
    drain_s: float
    kamailio_children: int
    wait_quiet_s: float = 0.0
    budget_s: float | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "systems": list(self.systems),
            "rates": list(self.rates),
            "duration_s": self.duration,
            "retries": self.retries,
            "budget_s": self.budget_s,
            "drain_s": self.drain_s,
            "kamailio_children": self.kamailio_children,
            "max_retrans_ratio": callrate.MAX_RETRANS_RATIO,
            "min_rate_ratio": callrate.MIN_RATE_RATIO,
        }

    def worst_case_seconds(self) -> float:
        """The call-rate part at its longest: every step of every system run (and retried),
        or each system's time budget, plus starting and stopping each system."""
        per_step = self.duration + 1.5 + self.drain_s
        total = 0.0
        for name in self.systems:
            steps = len(self.rates) * (1 + self.retries) * per_step
            if self.budget_s is not None:
                steps = min(steps, self.budget_s)
            total += steps + (30.0 if name.startswith("switchboard-ray") else 3.0)
        return total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark switchboard side by side with Kamailio: call rate "
                    "(SIPp UAC -> proxy -> SIPp UAS), CPU per call, response times, memory.",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"short steps ({QUICK_DURATION:g} s, coarse rates): under 3 minutes")
    p.add_argument("--systems",
                   help="comma-separated systems for the call-rate part (switchboard, "
                        "switchboard-ray-N, kamailio; default: "
                        f"{QUICK_SYSTEMS} with --quick, {FULL_SYSTEMS} otherwise); the "
                        "dialogs part takes switchboard and kamailio from it")
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated parts to run ({', '.join(PARTS + ON_REQUEST)}; "
                        f"default: all but {', '.join(ON_REQUEST)})")
    p.add_argument("--dialogs", metavar="N,N",
                   help="dialogs-held sizes (default: 10000 with --quick, "
                        "10000,50000,100000 otherwise)")
    p.add_argument("--dialogs-rate", type=float, default=1000.0, metavar="R",
                   help="calls/s that fill the dialogs (default 1000)")
    settle = p.add_mutually_exclusive_group()
    settle.add_argument("--dialogs-settle", dest="dialogs_settle", action="store_true",
                        default=None, help="wait for the fill's transactions to end before "
                                           "reading memory (default without --quick)")
    settle.add_argument("--no-dialogs-settle", dest="dialogs_settle", action="store_false")
    p.add_argument("--long-calls", type=int, metavar="N",
                   help="call operations: long calls up meanwhile (default 2000)")
    p.add_argument("--background-rate", type=float, default=200.0, metavar="R",
                   help="call operations: short calls/s meanwhile (default 200)")
    p.add_argument("--callops-rates", metavar="R,R",
                   help="call operations: steady operations/s (default 100 with --quick, "
                        "50,100,200 otherwise)")
    p.add_argument("--callops-seconds", type=float, metavar="S",
                   help="call operations: seconds per steady rate")
    p.add_argument("--events-rates", metavar="R,R", help="events: calls/s per step")
    p.add_argument("--max-rate", type=float, metavar="R",
                   help="overload: switchboard's highest clean rate (default: the call-rate "
                        "part's, else a quick search)")
    p.add_argument("--overload-duration", type=float, metavar="S",
                   help="overload: seconds per step (default 4 with --quick, 15 otherwise)")
    p.add_argument("--tls-rates", metavar="R,R",
                   help="TLS: offered calls/s per mode (default "
                        f"{','.join(f'{r:g}' for r in tls.RATES)})")
    p.add_argument("--tls-duration", type=float, metavar="S",
                   help=f"TLS: seconds per step (default {tls.DURATION_S:g}, 5 with --quick)")
    p.add_argument("--tls-connections", type=int, metavar="N",
                   help=f"TLS: idle connections per system and kind (default "
                        f"{tls.CONNECTIONS}; 0: skip the memory readings)")
    p.add_argument("--rates", help="comma-separated offered rates, calls/s (overrides the mode)")
    p.add_argument("--duration", type=float, help="seconds per step (overrides the mode)")
    p.add_argument("--budget", type=float, metavar="S",
                   help="call rate: longest a system's stepping may run, seconds (default "
                        f"{QUICK_BUDGET_S:g} with --quick, {FULL_BUDGET_S:g} otherwise; 0: none)")
    p.add_argument("--retries", type=int,
                   help="re-run a step that is not clean this many times before stopping "
                        "(default: 0 with --quick, 1 otherwise)")
    p.add_argument("--drain", type=float, default=0.0, metavar="S",
                   help="after each step keep reading the proxy's CPU for S seconds (its "
                        "timers' work for the step's calls); reported separately")
    p.add_argument("--kamailio-children", type=int, default=os.cpu_count() or 2, metavar="N",
                   help="Kamailio UDP worker processes (-n; default: one per CPU)")
    p.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    p.add_argument("--keep-raw", action="store_true",
                   help="keep SIPp's files and the proxies' logs in <out>/<timestamp>-raw/")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install kamailio when it is missing")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each system, wait up to S seconds for other work on the "
                        "machine to drop under 25%% of one core")
    p.add_argument("--profile", action="store_true",
                   help="instead of the suite: one step of switchboard under cProfile, and "
                        "the functions with the most own time")
    p.add_argument("--profile-rate", type=float, default=300.0, metavar="R",
                   help="offered calls/s for --profile (default 300)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only re-write the markdown and plots of a saved result")
    return p.parse_args(argv)


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    known = PARTS + ON_REQUEST
    for part in parts:
        if part not in known:
            raise SystemExit(f"unknown part {part!r} (known: {', '.join(known)}; the soak is "
                             "python -m bench.soak)")
    return tuple(p for p in known if p in parts)


def make_plan(args: argparse.Namespace) -> Plan:
    text = args.systems or (QUICK_SYSTEMS if args.quick else FULL_SYSTEMS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not systems.known_system(name):
            raise SystemExit(f"unknown system {name!r} (known: {', '.join(systems.SYSTEMS)})")
    if args.rates:
        rates = tuple(sorted(float(r) for r in args.rates.split(",") if r.strip()))
    else:
        rates = tuple(float(r) for r in (QUICK_RATES if args.quick else FULL_RATES))
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    budget = args.budget if args.budget is not None else (
        QUICK_BUDGET_S if args.quick else FULL_BUDGET_S)
    return Plan("quick" if args.quick else "full", names, rates, duration, retries,
                args.drain, args.kamailio_children, args.wait_quiet,
                budget if budget > 0 else None)


def host_info(sipp_binary: str) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        # The servers the bench starts import the same install, with the same environment.
        "switchboard_core": switchboard.BUILD,
        "sipp": sipp.sipp_version(sipp_binary),
        "hostname": platform.node(),
    }


# --- progress display -------------------------------------------------------------------------


class Ui:
    """rich progress bars when rich is there, plain lines otherwise."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            self.console: Any = None
            self.progress: Any = None
            return
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), console=self.console, transient=False,
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        with self.progress:
            yield

    def print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def add(self, description: str, total: float) -> Any:
        if self.progress is None:
            self.print(description)
            return None
        return self.progress.add_task(description, total=total)

    def update(self, task: Any, **kwargs: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, **kwargs)


def step_line(name: str, s: callrate.StepResult) -> str:
    verdict = "[green]clean[/]" if s.clean else "[red]not clean[/]: " + "; ".join(s.reasons)
    cpu = f"{s.cpu_ms_per_call:.3f}" if s.cpu_ms_per_call is not None else "—"
    return (f"  {name:<12} {s.offered_rate:>6.0f}/s offered  {s.completed_rate:>7.1f}/s done  "
            f"ok {s.successful_calls:>6}  failed {s.failed_calls}  "
            f"retrans {100 * s.retrans_ratio:.2f}%  p50/p99 {s.rtt_p50_ms}/{s.rtt_p99_ms} ms  "
            f"CPU {cpu} ms/call ({s.proxy_cpu_pct:.0f}%, SIPp {s.loadgen_cpu_pct:.0f}%, "
            f"other {s.other_cpu_pct:.0f}%)  drops {s.proxy_udp_drops}/{s.loadgen_udp_drops}  "
            f"PSS {s.pss_kb_peak / 1024:.1f} MB  "
            f"{verdict}")


# --- the run ----------------------------------------------------------------------------------


def run(plan: Plan, out: Path, *, keep_raw: bool, install: bool, plots: bool,
        parts: Sequence[str] = ("callrate",), parts_plan: PartsPlan | None = None
        ) -> dict[str, Path]:
    ui = Ui()
    binary = sipp_binary()
    if binary is None:
        raise SystemExit("SIPp is needed: apt-get install -y sip-tester")
    dialog_systems = tuple(n for n in plan.systems if n in DIALOG_SYSTEMS)
    if "kamailio" in plan.systems and install and (
            "callrate" in parts or "tls" in parts
            or ("dialogs" in parts and "kamailio" in dialog_systems)):
        systems.ensure_kamailio(ui.print, modules=["tls.so", "websocket.so"]
                                if "tls" in parts else [])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    raw = out / f"{stamp}-raw" if keep_raw else Path(tempfile.mkdtemp(prefix="bench-"))
    if "callrate" in parts:
        ui.print(f"bench {plan.mode}: {', '.join(plan.systems)}; rates "
                 f"{', '.join(f'{r:g}' for r in plan.rates)} calls/s, {plan.duration:g} s per "
                 f"step (call rate at most ~{plan.worst_case_seconds() / 60:.1f} min)")
    if parts_plan is not None and any(p != "callrate" for p in parts):
        ui.print(f"parts: {', '.join(parts)} (besides call rate about "
                 f"{parts_plan.estimate_seconds(parts, len(dialog_systems)) / 60:.1f} min)")
    background = proc.sample_host_busy(2.0)
    if background > 20:
        ui.print(f"[yellow]warning: other work uses {background:.0f}% of one core right now; "
                 "the numbers will be skewed[/]")
    runs: dict[str, callrate.SystemRun] = {}
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        with ui.running():
            if "callrate" in parts:
                t = time.monotonic()
                runs = run_callrate(ui, plan, raw, binary)
                timings["callrate"] = round(time.monotonic() - t, 1)
            pp = parts_plan
            if pp is not None:
                for part in parts:
                    if part == "callrate":
                        continue
                    if plan.wait_quiet_s > 0:
                        wait_quiet(ui, plan.wait_quiet_s)
                    t = time.monotonic()
                    task = ui.add(f"{part}: running", total=1.0)
                    try:
                        results[part] = run_part(part, ui, pp, plan, raw, binary, runs,
                                                 dialog_systems, task)
                    except Exception as exc:  # keep the other parts' results
                        results[part] = {"error": f"{type(exc).__name__}: {exc}"}
                        ui.print(f"[red]{part}: {exc}[/]")
                    timings[part] = round(time.monotonic() - t, 1)
                    ui.update(task, completed=1.0, description=f"{part}: done "
                              f"({timings[part]:.0f} s)")
    finally:
        if not keep_raw:
            shutil.rmtree(raw, ignore_errors=True)
    finished = datetime.now().astimezone().isoformat(timespec="seconds")
    settings = plan.settings()
    if parts_plan is not None:
        settings["parts"] = parts_plan.settings()
    result_doc = report.build_result(
        started=started, finished=finished, mode=plan.mode, settings=settings,
        host={**host_info(binary), "background_busy_pct": round(background, 1)}, runs=runs,
        extra={"wall_seconds": round(time.monotonic() - t0, 1), "part_seconds": timings},
        parts=results,
    )
    paths = report.write(result_doc, out, stamp, plots=plots)
    print_summary(ui, result_doc, paths)
    return paths


def run_callrate(ui: Ui, plan: Plan, raw: Path, binary: str) -> dict[str, callrate.SystemRun]:
    runs: dict[str, callrate.SystemRun] = {}
    for name in plan.systems:
        if plan.wait_quiet_s > 0:
            wait_quiet(ui, plan.wait_quiet_s)
        system = systems.make_system(name, kamailio_children=plan.kamailio_children)
        overall = ui.add(f"{name}: starting", total=len(plan.rates))
        step_task = ui.add("  step", total=1.0)

        def on_step(index: int, rate: float, attempt: int, name: str = name,
                    overall: Any = overall, step_task: Any = step_task
                    ) -> callrate.Progress:
            again = f", try {attempt}" if attempt > 1 else ""
            ui.update(overall, completed=index,
                      description=f"{name}: step {index + 1}/{len(plan.rates)}")
            ui.update(step_task, completed=0.0,
                      description=f"  {rate:g} calls/s{again}")
            return lambda frac: ui.update(step_task, completed=frac)

        def on_done(step: callrate.StepResult, name: str = name,
                    overall: Any = overall) -> None:
            ui.print(step_line(name, step))
            if step.clean:
                ui.update(overall, advance=1)

        result = callrate.run_system(
            system, plan.rates, plan.duration, raw / name, sipp_binary=binary,
            retries=plan.retries, drain_s=plan.drain_s, on_step=on_step,
            on_done=on_done, budget_s=plan.budget_s,
        )
        runs[name] = result
        ui.update(overall, description=f"{name}: done, highest clean rate "
                  f"{result.max_clean_rate if result.max_clean_rate else '—'}")
        ui.update(step_task, visible=False)
        if result.error:
            ui.print(f"[red]{name}: {result.error}[/]")
    return runs


def run_part(part: str, ui: Ui, pp: PartsPlan, plan: Plan, raw: Path, binary: str,
             runs: dict[str, callrate.SystemRun], dialog_systems: Sequence[str],
             task: Any) -> dict[str, Any]:
    """One of the parts beyond call rate → its record for the JSON."""
    say = ui.print
    if part == "dialogs":
        out: dict[str, Any] = {"settings": {"sizes": list(pp.dialog_sizes),
                                            "fill_rate": pp.dialog_rate,
                                            "settle": pp.dialog_settle},
                               "runs": {}}
        for name in dialog_systems:
            system = systems.make_system(name, kamailio_children=plan.kamailio_children,
                                         ctl=True)
            run_ = dialogs.run_system(
                system, pp.dialog_sizes, raw / f"dialogs-{name}", sipp_binary=binary,
                fill_rate=pp.dialog_rate, settle=pp.dialog_settle, say=say,
                progress=lambda f: ui.update(task, completed=f))
            out["runs"][name] = run_.to_json()
            if run_.error:
                say(f"[red]dialogs {name}: {run_.error}[/]")
        if "switchboard" in dialog_systems and pp.heap_dialogs:
            out["heap"] = run_heap(pp.heap_dialogs)
            say(f"  switchboard core heap: {out['heap']}")
        return out
    if part == "callops":
        return callops.run(raw / "callops", sipp_binary=binary,
                           long_calls=pp.callops_long_calls,
                           background_rate=pp.callops_background_rate,
                           measured_calls=pp.callops_measured_calls, rates=pp.callops_rates,
                           seconds=pp.callops_seconds, burst_s=pp.callops_burst_s,
                           say=say).to_json()
    if part == "events":
        return events.run(raw / "events", sipp_binary=binary, rates=pp.events_rates,
                          duration=pp.events_duration, say=say)
    if part == "overload":
        max_rate = pp.max_rate
        source = "--max-rate"
        sb = runs.get("switchboard")
        if max_rate is None and sb is not None and sb.max_clean_rate:
            max_rate, source = sb.max_clean_rate, "call-rate part of this run"
        result = overload.run(raw / "overload", sipp_binary=binary, max_rate=max_rate,
                              fractions=pp.overload_fractions, recovery=pp.overload_recovery,
                              duration=pp.overload_duration, say=say)
        if max_rate is not None:
            result["settings"]["max_rate_source"] = source
        return result
    if part == "tls":
        names = [n for n in plan.systems if n in TLS_SYSTEMS]
        return tls.run(pp.tls_plan(names, plan.kamailio_children), raw / "tls",
                       sipp_binary=binary, say=say,
                       progress=lambda f: ui.update(task, completed=f))
    raise ValueError(f"unknown part {part!r}")


def run_heap(dialogs_n: int) -> dict[str, Any]:
    """`python -m bench.heap` in its own process (tracemalloc slows everything it runs)."""
    import subprocess

    env = systems.Switchboard().environment()
    try:
        done = subprocess.run([sys.executable, "-m", "bench.heap", "--dialogs", str(dialogs_n)],
                              cwd=systems.REPO, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-300:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def wait_quiet(ui: Ui, limit_s: float, threshold: float = 25.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        busy = proc.sample_host_busy(1.0)
        if busy < threshold:
            return
        if time.monotonic() >= deadline:
            ui.print(f"[yellow]machine still busy ({busy:.0f}% of one core); going on[/]")
            return
        ui.print(f"waiting for the machine to be quiet ({busy:.0f}% of one core busy)")


def print_summary(ui: Ui, result: dict[str, Any], paths: dict[str, Path]) -> None:
    runs = report.runs_of(result)
    for name, r in runs.items():
        best = r.step_at(r.max_clean_rate)
        if best is None:
            ui.print(f"{name}: no clean step" + (f" ({r.error})" if r.error else ""))
            continue
        bound = " (time budget: at least)" if r.budget_stopped else ""
        ui.print(f"{name}: highest clean rate {best.offered_rate:g} calls/s{bound}; there: "
                 f"CPU {best.cpu_ms_per_call} ms/call, p50/p99 {best.rtt_p50_ms}/"
                 f"{best.rtt_p99_ms} ms, PSS {best.pss_kb_peak / 1024:.1f} MB, "
                 f"RSS {best.rss_kb_peak / 1024:.1f} MB")
    head = result.get("headline", {})
    if "cpu_ms_per_call" in head:
        ui.print(f"switchboard/Kamailio: highest clean rate "
                 f"{report._x(head['max_clean_rate']['ratio'])}, CPU per call "
                 f"{report._x(head['cpu_ms_per_call']['ratio'])} "
                 f"(at {head.get('common_rate')} calls/s)")
    ui.print(f"wrote {paths['json']} and {paths['md']}"
             + "".join(f", {p.name}" for k, p in paths.items() if k.startswith("png")))


def profile_main(args: argparse.Namespace) -> int:
    from .profile import run_profile

    binary = sipp_binary()
    if binary is None:
        raise SystemExit("SIPp is needed: apt-get install -y sip-tester")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    duration = args.duration or 10.0
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        result = run_profile(args.profile_rate, duration, Path(tmp), args.out / stamp,
                             sipp_binary=binary)
    print(result["table"])
    print(f"wrote {args.out / result['text_file']} and {args.out / result['stats_file']}")
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM (`timeout`, a CI runner) ends the run through the `finally` blocks that stop
    the systems and SIPp, which run in sessions of their own and would outlive the bench."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    if args.render is not None:
        doc = json.loads(args.render.read_text())
        paths = report.write(doc, args.render.parent, args.render.stem, plots=not args.no_plots)
        print(f"wrote {paths['md']}")
        return 0
    if args.profile:
        return profile_main(args)
    plan = make_plan(args)
    parts = parse_parts(args.only)
    run(plan, args.out, keep_raw=args.keep_raw, install=not args.no_install,
        plots=not args.no_plots, parts=parts, parts_plan=make_parts_plan(args))
    return 0
