"""Memory per held dialog as an operator's monitoring sees it: the RSS growth of `serve`.

`python -m bench.memory --dialogs 10000` starts switchboard's local runtime (`serve`, the
compiled core unless SWITCHBOARD_PURE=1), a SIPp UAS, then:

1. a warm-up of `--warmup` short calls (scenarios/uac.xml: INVITE with SDP, 180, 200 with SDP,
   ACK, BYE), waited out until their transactions and their deleted dialogs are gone, so code
   paths, caches and tables are warm; the process's memory is read then (the baseline);
2. long calls (scenarios/uac_long.xml, held `--hold` s) at `--rate` calls/s up to each size in
   turn; at each size, once the system counts that many confirmed dialogs and no transaction
   is in use any more (the fill's INVITE transactions end a T4 after their ACK), RSS (VmRSS)
   and PSS (smaps_rollup) are read: growth over the baseline ÷ dialogs held, and from the
   second size on the growth since the previous size ÷ dialogs added (marginal);
3. the calls hang up by themselves (SIPp sends the BYEs after `--hold`); once no dialog is
   active, no transaction is in use and the deleted dialogs have been dropped (the core keeps
   them `deleted_linger` s for late messages), memory is read once more: what the calls left
   behind, per dialog, over the baseline.

Memory is never read after a `dialog:list` (its answer's buffers would count). Every reading
is the median of a few, 0.3 s apart. The JSON result goes to stdout (and `--out`).

`--trace DIR` (off by default) runs `serve` under `bench/_memwatch.py`: after each reading
(idle, baseline, each size, after hang-up, then once more after a full garbage collection) it
takes a look inside the process — tracemalloc's snapshot (`--trace-frames`, 0 for none: the
RSS is then as untraced), objects by type and by collector generation, CPython's arena
statistics — and writes DIR/report.txt: what grew between the baseline and the last looks, by
line and by type. A traced run's RSS is not the figure (tracemalloc doubles the heap).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import proc, sipp
from .load import Uacs, Uas
from .systems import REPO, Switchboard

DELETED_LINGER_S = 32.0  # ProxyConfig.deleted_linger: how long a deleted dialog stays


@dataclass(slots=True)
class Reading:
    rss_kb: int
    pss_kb: int
    dialogs: int  # confirmed dialogs counted by the system
    transactions: int
    at_s: float  # since the start of the run
    # RSS by kind of mapping (smaps): `heap` (the C allocator's brk heap), `anon` (anonymous
    # mappings: the Python allocator's arenas, large C allocations), `file`, `other`.
    rss_by_kind_kb: dict[str, int] = field(default_factory=dict)


def rss_by_kind(pid: int) -> dict[str, int]:
    """RSS of a process by kind of mapping, from /proc/PID/smaps (kB)."""
    out = {"heap": 0, "anon": 0, "file": 0, "other": 0}
    kind = "other"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
            name = head[5].strip() if len(head) > 5 else ""
            kind = ("heap" if name == "[heap]" else "anon" if not name
                    else "file" if name.startswith("/") else "other")
        elif line.startswith("Rss:"):
            out[kind] += int(line.split()[1])
    return out


@dataclass(slots=True)
class Result:
    build: str
    rate: float
    allocator: str
    warmup: int
    hold_s: float
    idle: Reading | None = None
    baseline: Reading | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    after_hangup: dict[str, Any] | None = None
    failed_calls: int = 0
    error: str | None = None


def per_dialog(delta_kb: int, dialogs: int) -> float | None:
    return round(delta_kb * 1024 / dialogs, 1) if dialogs > 0 else None


class TracedSwitchboard(Switchboard):
    """`serve` under `bench/_memwatch.py`: looks inside the process on demand."""

    def __init__(self, trace_dir: Path, frames: int, extra_args: list[str]) -> None:
        super().__init__(extra_args=extra_args)
        self.trace_dir = trace_dir
        self.frames = frames
        self.looks: list[str] = []

    def command(self, port: int) -> list[str]:
        cmd = super().command(port)
        i = cmd.index("switchboard")
        return [*cmd[:i - 1], "-m", "bench._memwatch", str(self.trace_dir), *cmd[i:]]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["BENCH_MEMWATCH_FRAMES"] = str(self.frames)
        return env

    def look(self, label: str, *options: str, limit_s: float = 300.0) -> None:
        """One look (`bench/_memwatch.py`); `options`: collect, record, born."""
        done = self.trace_dir / f"{label}.done"
        (self.trace_dir / "next").write_text(" ".join([label, *options]))
        os.kill(self.pids()[0], signal.SIGUSR2)
        deadline = time.monotonic() + limit_s
        while not done.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"look {label!r}: no answer in {limit_s:.0f} s")
            time.sleep(0.2)
        self.looks.append(label)


def trace_report(trace_dir: Path, looks: list[str], top: int = 30) -> str:
    """What grew from the baseline look to each later one: by line (tracemalloc) and by type."""
    import tracemalloc

    lines: list[str] = []
    infos = {label: json.loads((trace_dir / f"{label}.json").read_text()) for label in looks}
    for label in looks:
        i = infos[label]
        lines.append(f"{label}: traced {i['traced_kb']} kB, RSS {i['rss_kb']} kB "
                     f"(anon {i['rss_anon_kb']} kB), gc tracked by generation "
                     f"{i['gc_tracked_by_generation']}, frozen {i['gc_frozen']}"
                     + (f", before collect {i['before_collect']}" if i["before_collect"] else ""))
        born = i.get("born_since_record")
        if born:
            lines.append(f"  born since the baseline and alive: {json.dumps(born, indent=1)}")
    if "baseline" not in infos:
        return "\n".join(lines)
    base_types = infos["baseline"]["objects_by_type"]
    for label in looks[looks.index("baseline") + 1:]:
        types = infos[label]["objects_by_type"]
        grown = sorted(((n - base_types.get(t, 0), t) for t, n in types.items()),
                       reverse=True)[:top]
        lines.append(f"\n== objects by type, {label} - baseline ==")
        lines += [f"{d:+9d} {t}" for d, t in grown if d]
        base_snap = trace_dir / "baseline.snap"
        snap = trace_dir / f"{label}.snap"
        if base_snap.exists() and snap.exists():
            old = tracemalloc.Snapshot.load(str(base_snap))
            new = tracemalloc.Snapshot.load(str(snap))
            for key in ("lineno", "traceback"):
                lines.append(f"\n== heap by {key}, {label} - baseline ==")
                for stat in new.compare_to(old, key)[:top if key == "lineno" else 8]:
                    if key == "lineno":
                        lines.append(str(stat))
                    else:
                        lines.append(f"{stat.size_diff / 1024:+.1f} KiB "
                                     f"{stat.count_diff:+d} blocks")
                        lines += [f"    {frame}" for frame in stat.traceback.format()]
    return "\n".join(lines)


def build_of(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", "import switchboard; print(switchboard.BUILD)"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    return (out.stdout.strip() or out.stderr.strip()[-200:])


class Run:
    def __init__(self, system: Switchboard, t0: float) -> None:
        self.system = system
        self.t0 = t0

    def counts(self) -> tuple[int, int]:
        stats = self.system.statistics("dialog:active_dialogs", "tm:inuse_transactions")
        return stats.get("dialog:active_dialogs", 0), stats.get("tm:inuse_transactions", 0)

    def read(self, samples: int = 3) -> Reading:
        dialogs, txns = self.counts()
        mems = []
        for i in range(samples):
            if i:
                time.sleep(0.3)
            mems.append(proc.memory(self.system.pids()))
        mems.sort(key=lambda m: m.rss_kb)
        mem = mems[len(mems) // 2]
        pids = self.system.pids()
        return Reading(mem.rss_kb, mem.pss_kb, dialogs, txns,
                       round(time.monotonic() - self.t0, 1),
                       rss_by_kind(pids[0]) if pids else {})

    def wait_filled(self, size: int, limit_s: float) -> None:
        """Until `size` dialogs are held, or their count stopped growing (calls failed)."""
        deadline = time.monotonic() + limit_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            dialogs, _ = self.counts()
            if dialogs >= size:
                return
            if dialogs != last:
                last, last_change = dialogs, time.monotonic()
            elif time.monotonic() - last_change > 10:
                return
            time.sleep(1.0)

    def wait(self, done: Any, limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            dialogs, txns = self.counts()
            if done(dialogs, txns):
                return
            time.sleep(1.0)
        dialogs, txns = self.counts()
        raise RuntimeError(f"{what}: not reached in {limit_s:.0f} s "
                           f"({dialogs} dialogs, {txns} transactions)")


def measure(sizes: list[int], *, rate: float, warmup: int, hold_s: float | None,
            sipp_binary: str, workdir: Path, say: Any = print,
            trace_dir: Path | None = None, trace_frames: int = 6,
            allocator: str = "python") -> Result:
    env_probe = Switchboard().environment()
    total = max(sizes)
    if hold_s is None:
        # Long enough for every fill and its readings: the first calls must still be up when
        # the last size is read.
        hold_s = total / rate * 1.5 + 60 * len(sizes) + 30
    result = Result(build=build_of(env_probe), rate=rate, warmup=warmup, hold_s=hold_s,
                    allocator=allocator)
    extra: list[str] = []
    if allocator != "python":
        config = workdir / "allocator.toml"
        config.write_text(f'[runtime]\nallocator = "{allocator}"\n')
        extra = ["--config", str(config)]
    system = (Switchboard(extra_args=extra) if trace_dir is None
              else TracedSwitchboard(trace_dir, trace_frames, extra))

    def look(label: str, *options: str) -> None:
        if isinstance(system, TracedSwitchboard):
            system.look(label, *options)

    uas: Uas | None = None
    uacs: list[Uacs] = []
    t0 = time.monotonic()
    try:
        system.start(workdir)
        run = Run(system, t0)
        time.sleep(1.0)
        result.idle = run.read()
        look("idle")
        budget = int(hold_s + total / rate * 3 + 600)
        uas = Uas(sipp_binary, workdir, timeout_s=budget)
        if warmup:
            warm = Uacs(sipp_binary, system, workdir / "warmup", name="warm", uas=uas,
                        rate=min(rate, 500.0), calls=warmup, timeout_s=budget)
            uacs.append(warm)
            warm.wait(warmup / min(rate, 500.0) + 60)
            result.failed_calls += sipp.stat_int(warm.stats(), "FailedCall(C)")
            run.wait(lambda d, t: d == 0 and t == 0, 90, "warm-up calls over")
            time.sleep(DELETED_LINGER_S + 3)  # their deleted dialogs dropped
        result.baseline = base = run.read()
        look("baseline", "record")
        say(f"baseline: RSS {base.rss_kb} kB, PSS {base.pss_kb} kB "
            f"(idle {result.idle.rss_kb} kB); build: {result.build}")
        held = 0
        previous = base
        for size in sorted(sizes):
            add = size - held
            uac = Uacs(sipp_binary, system, workdir / f"fill-{size}", name="uac", uas=uas,
                       rate=rate, calls=add, scenario=sipp.UAC_LONG_SCENARIO,
                       extra=["-d", str(int(hold_s * 1000))], limit=add + 10,
                       timeout_s=budget)
            uacs.append(uac)
            t_fill = time.monotonic()
            run.wait_filled(size, add / rate * 2 + 60)
            fill_s = time.monotonic() - t_fill
            run.wait(lambda d, t: t == 0, 60, "fill's transactions over")
            point = run.read()
            look(f"held-{size}")
            failed = sipp.stat_int(uac.stats(), "FailedCall(C)")
            result.failed_calls += failed
            if point.dialogs < size * 0.95:
                raise RuntimeError(f"only {point.dialogs} of {size} dialogs held when read "
                                   f"({failed} calls failed)")
            entry = {
                **asdict(point), "target": size, "fill_s": round(fill_s, 1),
                "rss_bytes_per_dialog": per_dialog(point.rss_kb - base.rss_kb, point.dialogs),
                "pss_bytes_per_dialog": per_dialog(point.pss_kb - base.pss_kb, point.dialogs),
            }
            if previous is not base:
                added = point.dialogs - previous.dialogs
                entry["rss_marginal_bytes_per_dialog"] = per_dialog(
                    point.rss_kb - previous.rss_kb, added)
                entry["pss_marginal_bytes_per_dialog"] = per_dialog(
                    point.pss_kb - previous.pss_kb, added)
            result.points.append(entry)
            say(f"{point.dialogs} held: RSS +{point.rss_kb - base.rss_kb} kB = "
                f"{entry['rss_bytes_per_dialog']} B/dialog, PSS "
                f"{entry['pss_bytes_per_dialog']} B/dialog"
                + (f", marginal RSS {entry['rss_marginal_bytes_per_dialog']} B, PSS "
                   f"{entry['pss_marginal_bytes_per_dialog']} B" if previous is not base
                   else ""))
            held, previous = point.dialogs, point
        # The calls hang up when their hold ends.
        left = max(0.0, hold_s - (time.monotonic() - t_fill)) + total / rate * 2 + 120
        run.wait(lambda d, t: d == 0, left, "every call hung up")
        run.wait(lambda d, t: t == 0, 90, "the BYE transactions over")
        time.sleep(DELETED_LINGER_S + 3)
        after = run.read()
        result.after_hangup = {
            **asdict(after), "dialogs_were": held,
            "rss_left_bytes_per_dialog": per_dialog(after.rss_kb - base.rss_kb, held),
            "pss_left_bytes_per_dialog": per_dialog(after.pss_kb - base.pss_kb, held),
        }
        if isinstance(system, TracedSwitchboard):
            look("after", "born")
            look("collected", "collect", "born")
            collected = run.read()
            result.after_hangup["rss_left_after_collect_bytes_per_dialog"] = per_dialog(
                collected.rss_kb - base.rss_kb, held)
            look("trimmed", "collect", "trim")
            trimmed = run.read()
            result.after_hangup["rss_left_after_trim_bytes_per_dialog"] = per_dialog(
                trimmed.rss_kb - base.rss_kb, held)
            result.after_hangup["rss_by_kind_after_trim_kb"] = trimmed.rss_by_kind_kb
            report = trace_report(system.trace_dir, system.looks)
            (system.trace_dir / "report.txt").write_text(report + "\n")
            say(report)
        say(f"  RSS by mapping, kB: baseline {base.rss_by_kind_kb}, "
            f"held {previous.rss_by_kind_kb}, after {after.rss_by_kind_kb}")
        say(f"after hang-up: RSS +{after.rss_kb - base.rss_kb} kB = "
            f"{result.after_hangup['rss_left_bytes_per_dialog']} B/dialog left, PSS "
            f"{result.after_hangup['pss_left_bytes_per_dialog']} B/dialog")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"error: {result.error}")
    finally:
        system.stop()
        for running in [*uacs, uas]:
            if running is not None:
                running.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dialogs", default="10000",
                   help="sizes held, comma-separated (10000; 50000,100000 for the marginal)")
    p.add_argument("--rate", type=float, default=1000.0, help="fill rate, calls/s")
    p.add_argument("--warmup", type=int, default=500, help="short calls before the baseline")
    p.add_argument("--hold", type=float, default=None,
                   help="seconds each long call is held (default: enough for every reading)")
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep SIPp's and serve's files here (default: a temporary directory)")
    p.add_argument("--allocator", choices=("python", "mimalloc"), default="python",
                   help='serve\'s `[runtime] allocator` (switchboard/allocator.py)')
    p.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="look inside serve after each reading (bench/_memwatch.py), into DIR")
    p.add_argument("--trace-frames", type=int, default=6,
                   help="tracemalloc frames with --trace (0: count objects only, no tracing)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.dialogs.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        result = measure(sizes, rate=args.rate, warmup=args.warmup, hold_s=args.hold,
                         sipp_binary=args.sipp, workdir=args.workdir or Path(tmp),
                         say=lambda s: print(s, file=sys.stderr, flush=True),
                         trace_dir=args.trace, trace_frames=args.trace_frames,
                         allocator=args.allocator)
    text = json.dumps(asdict(result), indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
