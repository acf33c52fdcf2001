"""Where `serve`'s CPU goes, seen from outside: `perf record` of the process under SIPp.

`python -m bench.perf_profile [--rate R] [--duration S] [--freq F] [--out DIR]` starts
switchboard as the call-rate bench does (`bench/systems.py`, whichever build of the core
`import switchboard` picks: compile it in place first to profile the compiled core), offers R
calls/s for S seconds (`callrate.run_step`, SIPp UAC → proxy → UAS) and meanwhile samples the
proxy's process with `perf record -F F -g -p PID`. It prints the samples' split by shared
object (the kernel, libpython, the mypyc core, uvloop, libc) and the symbols with the most own
samples, and keeps `perf.data` in DIR for `perf report -i`. `--core CALLS` instead splits
the core's own time by module (cProfile of `bench.hotpath`'s call; with `SWITCHBOARD_PURE=1`).

cProfile (`python -m bench --profile`) sees only Python functions and slows them unevenly;
this sees the whole process, interpreter and kernel included, at a cost of a few per cent.
The machine is shared: read the proportions, not the times. Needs `perf` and the rights to
attach to a process (root, or `kernel.perf_event_paranoid` ≤ 1).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from . import callrate
from .systems import Switchboard

# What a shared object's path says it is, first match wins.
GROUPS = (
    ("kernel", ("[kernel", "[vdso]")),
    ("mypyc core", ("switchboard_core__mypyc", "/switchboard/sip/")),
    ("uvloop", ("uvloop",)),
    ("libpython (the interpreter)", ("libpython",)),
    ("libc", ("libc.so", "libc-", "ld-linux")),
    ("other extensions", (".so",)),
)


# What `--syscalls` counts: the loop's wake-ups and the datagrams in and out (libuv reads
# with recvmsg and uvloop sends with sendmsg).
SYSCALLS = ("epoll_pwait", "recvmsg", "sendmsg")


def parse_stat(text: str) -> dict[str, int]:
    """`perf stat -x ;` output: count by syscall name."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(";")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
            try:
                counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
            except ValueError:
                continue
    return counts


def group_of(dso: str) -> str:
    for name, markers in GROUPS:
        if any(m in dso for m in markers):
            return name
    return "other"


def parse_report(text: str) -> list[tuple[float, str, str]]:
    """Rows of `perf report --no-children --sort dso,sym --stdio -g none`: (percent, dso,
    symbol)."""
    rows: list[tuple[float, str, str]] = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        try:
            pct = float(parts[0].rstrip("%"))
        except ValueError:
            continue
        dso, _, sym = parts[2].partition("  ")
        rows.append((pct, parts[1], (dso + " " + sym.strip()).strip()))
    return rows


def parse_dso_report(text: str) -> Counter[str]:
    """`perf report --no-children --sort dso --stdio -g none`: percent by shared object."""
    by_dso: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].endswith("%"):
            try:
                by_dso[parts[1].strip()] += float(parts[0].rstrip("%"))
            except ValueError:
                continue
    return by_dso


def summarize(by_dso: Counter[str], rows: list[tuple[float, str, str]], top: int = 40) -> str:
    by_group: Counter[str] = Counter()
    for dso, pct in by_dso.items():
        by_group[group_of(dso)] += pct
    out = ["share of samples by kind of code:"]
    out += [f"  {pct:6.2f} %  {name}" for name, pct in by_group.most_common()]
    out.append("by shared object:")
    out += [f"  {pct:6.2f} %  {dso}" for dso, pct in by_dso.most_common(12)]
    out.append(f"top {top} symbols (own samples):")
    for pct, dso, sym in sorted(rows, reverse=True)[:top]:
        out.append(f"  {pct:6.2f} %  {Path(dso).name:<34} {sym}")
    return "\n".join(out)


def core_split(calls: int) -> str:
    """`bench.hotpath`'s call under cProfile, own time summed per module of the core; a
    built-in (a `str` or `dict` method) counts for the module that called it. Meaningful
    on the source build only (compiled functions are invisible to cProfile)."""
    import cProfile
    import pstats

    from .hotpath import Bench, _profiling_clock

    bench = Bench()
    for n in range(2000):
        bench.call(n)
    profiler = cProfile.Profile()
    bench.clock = _profiling_clock(profiler)
    for n in range(2000, 2000 + calls):
        bench.call(n)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_module: Counter[str] = Counter()
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in stats.items():
        if filename == "~":  # a built-in: charge each caller its part
            for (cfile, _cl, _cn), (_c1, _c2, ctt, _c4) in callers.items():
                by_module[_module(cfile)] += ctt
        else:
            by_module[_module(filename)] += tt
    total = sum(by_module.values())
    out = [f"core own time by module, {calls} calls (cProfile, built-ins charged to caller):"]
    out += [f"  {100 * t / total:6.2f} %  {m}" for m, t in by_module.most_common()]
    return "\n".join(out)


def _module(filename: str) -> str:
    if "/switchboard/" in filename:
        return filename[filename.index("/switchboard/") + 1:].removesuffix(".py")
    if "/lib/python3" in filename:
        return "stdlib: " + Path(filename).stem
    return filename


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--freq", type=int, default=999)
    p.add_argument("--out", type=Path, default=Path("bench-results/perf"))
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument("--syscalls", action="store_true",
                   help="instead of sampling, count the proxy's wake-ups (epoll_pwait) and its "
                   "datagrams in and out (recvmsg, sendmsg) with perf stat")
    p.add_argument("--core", type=int, metavar="CALLS",
                   help="instead: the core's own time per module (bench.hotpath's call under "
                   "cProfile, run with SWITCHBOARD_PURE=1)")
    args = p.parse_args()
    if args.core:
        print(core_split(args.core))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "perf.data"
    system = Switchboard()
    system.start(args.out)
    try:
        pid = system.pids()[0]
        if args.syscalls:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
            perf = subprocess.Popen(["perf", "stat", "-x", ";", "-e", events, "-p", str(pid),
                                     "-o", str(args.out / "syscalls.txt")])
        else:
            perf = subprocess.Popen(["perf", "record", "-q", "-F", str(args.freq), "-g",
                                     "-p", str(pid), "-o", str(data)])
        time.sleep(0.5)  # perf attached before the first call
        step = callrate.run_step(system, args.rate, args.duration, args.out / "step",
                                 sipp_binary=args.sipp)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    finally:
        system.stop()
    print(f"switchboard ({system.version()}), {args.rate:g} calls/s offered for "
          f"{args.duration:g} s: {step.successful_calls} calls ok, {step.failed_calls} failed, "
          f"CPU {step.cpu_ms_per_call} ms/call (under perf)")
    if args.syscalls:
        counts = parse_stat((args.out / "syscalls.txt").read_text())
        calls = max(1, step.successful_calls)
        for name in SYSCALLS:
            n = counts.get(name, 0)
            print(f"  {name:<12} {n:>9}  {n / calls:6.2f} per call")
        wakes = counts.get("epoll_pwait", 0)
        if wakes:
            print(f"  datagrams received per wake-up: {counts.get('recvmsg', 0) / wakes:.2f}")
        return

    def report(*options: str) -> str:
        return subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                               "-g", "none", *options],
                              capture_output=True, text=True, check=True).stdout

    print(summarize(parse_dso_report(report("--sort", "dso")),
                    parse_report(report("--sort", "dso,sym", "--percent-limit", "0.05"))))
    print(f"perf data: {data}  (perf report -i {data} --no-children --sort dso,sym)")


if __name__ == "__main__":
    main()
