"""`python -m bench`: run the suite, show progress, write the results.

Milestone 1 holds the call-rate part; dialogs held, call operations and events join here as
later parts of issue 4 land.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import callrate, proc, report, sipp, systems

# Offered rates (calls/s) and seconds per step.
QUICK_RATES = (200, 500, 1000, 1500, 2000, 3000, 4000, 5000)
QUICK_DURATION = 5.0
FULL_RATES = (100, 200, 300, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500,
              4000, 5000, 6000)
FULL_DURATION = 20.0


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

    def settings(self) -> dict[str, Any]:
        return {
            "systems": list(self.systems),
            "rates": list(self.rates),
            "duration_s": self.duration,
            "retries": self.retries,
            "drain_s": self.drain_s,
            "kamailio_children": self.kamailio_children,
            "max_retrans_ratio": callrate.MAX_RETRANS_RATIO,
            "min_rate_ratio": callrate.MIN_RATE_RATIO,
        }

    def worst_case_seconds(self) -> float:
        per_step = self.duration + 1.5 + self.drain_s
        return len(self.systems) * len(self.rates) * (1 + self.retries) * per_step


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark switchboard side by side with Kamailio: call rate "
                    "(SIPp UAC -> proxy -> SIPp UAS), CPU per call, response times, memory.",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"short steps ({QUICK_DURATION:g} s, coarse rates): under 3 minutes")
    p.add_argument("--systems", default="switchboard,kamailio",
                   help="comma-separated systems to measure (switchboard, kamailio)")
    p.add_argument("--rates", help="comma-separated offered rates, calls/s (overrides the mode)")
    p.add_argument("--duration", type=float, help="seconds per step (overrides the mode)")
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


def make_plan(args: argparse.Namespace) -> Plan:
    names = tuple(n.strip() for n in args.systems.split(",") if n.strip())
    for name in names:
        if name not in systems.SYSTEMS:
            raise SystemExit(f"unknown system {name!r} (known: {', '.join(systems.SYSTEMS)})")
    if args.rates:
        rates = tuple(sorted(float(r) for r in args.rates.split(",") if r.strip()))
    else:
        rates = tuple(float(r) for r in (QUICK_RATES if args.quick else FULL_RATES))
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    return Plan("quick" if args.quick else "full", names, rates, duration, retries,
                args.drain, args.kamailio_children, args.wait_quiet)


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


def run(plan: Plan, out: Path, *, keep_raw: bool, install: bool, plots: bool) -> dict[str, Path]:
    ui = Ui()
    binary = sipp.sipp_binary()
    if binary is None:
        raise SystemExit("SIPp is needed: apt-get install -y sip-tester")
    if "kamailio" in plan.systems and install:
        systems.ensure_kamailio(ui.print)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    raw = out / f"{stamp}-raw" if keep_raw else Path(tempfile.mkdtemp(prefix="bench-"))
    ui.print(f"bench {plan.mode}: {', '.join(plan.systems)}; rates "
             f"{', '.join(f'{r:g}' for r in plan.rates)} calls/s, {plan.duration:g} s per step "
             f"(at most ~{plan.worst_case_seconds() / 60:.1f} min)")
    background = proc.sample_host_busy(2.0)
    if background > 20:
        ui.print(f"[yellow]warning: other work uses {background:.0f}% of one core right now; "
                 "the numbers will be skewed[/]")
    runs: dict[str, callrate.SystemRun] = {}
    t0 = time.monotonic()
    try:
        with ui.running():
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
                    on_done=on_done,
                )
                runs[name] = result
                ui.update(overall, description=f"{name}: done, highest clean rate "
                          f"{result.max_clean_rate if result.max_clean_rate else '—'}")
                ui.update(step_task, visible=False)
                if result.error:
                    ui.print(f"[red]{name}: {result.error}[/]")
    finally:
        if not keep_raw:
            shutil.rmtree(raw, ignore_errors=True)
    finished = datetime.now().astimezone().isoformat(timespec="seconds")
    result_doc = report.build_result(
        started=started, finished=finished, mode=plan.mode, settings=plan.settings(),
        host={**host_info(binary), "background_busy_pct": round(background, 1)}, runs=runs,
        extra={"wall_seconds": round(time.monotonic() - t0, 1)},
    )
    paths = report.write(result_doc, out, stamp, plots=plots)
    print_summary(ui, result_doc, paths)
    return paths


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
        ui.print(f"{name}: highest clean rate {best.offered_rate:g} calls/s; there: "
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

    binary = sipp.sipp_binary()
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        doc = json.loads(args.render.read_text())
        paths = report.write(doc, args.render.parent, args.render.stem, plots=not args.no_plots)
        print(f"wrote {paths['md']}")
        return 0
    if args.profile:
        return profile_main(args)
    plan = make_plan(args)
    run(plan, args.out, keep_raw=args.keep_raw, install=not args.no_install,
        plots=not args.no_plots)
    return 0
