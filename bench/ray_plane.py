"""What the Ray runtime's control plane costs per call (`python -m bench.ray_plane`): CPU per
call of every process of a `serve --runtime ray --workers 1` session, process by process
(the `serve` driver, the controller actor, each worker actor, the raylet, the GCS, the rest
of Ray), beside the local runtime on the same rig, at fixed call rates.

The bench starts a private Ray itself (`ray.init(address="local")`, every address on
127.0.0.1, 2 CPUs, no dashboard), then `switchboard serve --runtime ray --ray-address GCS`
as a separate process, as `ray start` and `serve` would run on a node. SIPp UAC → switchboard
→ SIPp UAS, `--seconds` at each rate; CPU seconds of every process are read from /proc
(`bench/proc.py`) around the run and divided by the calls completed. The bench itself is a
Ray driver too (it asks the controller which build of the core each worker runs); its own
CPU is not counted. Before each run the same processes are measured idle for `--idle`
seconds: what Ray does in the background, per second, is printed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Imported after the environment above: Ray reads it at import.
from bench import proc
from bench.sipp import SippProcess, stat_int, stats_of, uac_command, uas_command
from bench.systems import REPO, Switchboard
from tests.support.ports import free_port
from tests.support.sipp import sipp_binary

HOST = "127.0.0.1"


def _category(pid: int, root: int, workers: dict[int, int]) -> str:
    """What a process of the session is, by its pid and command line."""
    if pid == root:
        return "driver (serve)"
    if pid in workers:
        return f"worker {workers[pid]}"
    line = proc.cmdline(pid)
    if "ray::Controller" in line:
        return "controller"
    if "raylet" in line.split(" ")[0]:
        return "raylet"
    if "gcs_server" in line:
        return "gcs"
    return "ray other"


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: proc.cpu_seconds([pid]) for pid in pids}


def _cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        _, utime, stime = proc.parse_stat(text)
        out[name] = out.get(name, 0.0) + (utime + stime) / proc.CLOCK_TICKS
    return out


def _session_pids(system: Switchboard, ray_session: bool) -> list[int]:
    """The system's processes; for Ray, every process of this bench's tree but SIPp and the
    bench itself (Ray's are children of this process, the actors children of the raylet)."""
    if not ray_session:
        return system.pids()
    me = os.getpid()
    return [pid for pid in proc.tree_pids(me)
            if pid != me and "sipp" not in proc.cmdline(pid).split(" ")[0]]


def measure(system: Switchboard, *, rate: int, seconds: int, idle: float, workdir: Path,
            categorize: Callable[[int], str], ray_session: bool) -> dict[str, Any]:
    binary = sipp_binary()
    assert binary is not None, "sipp not installed (apt-get install sip-tester)"
    uas_port = free_port("udp")
    uas = SippProcess("uas", uas_command(binary, port=uas_port,
                                         stat_file=str(workdir / f"uas-{rate}.csv")), workdir)
    time.sleep(0.5)
    try:
        pids = _session_pids(system, ray_session)
        start = _cpu_by_pid(pids)
        time.sleep(idle)
        before = _cpu_by_pid(pids)
        threads_before = {pid: _cpu_by_thread(pid) for pid in pids}
        started = time.monotonic()
        calls = rate * seconds
        uac = SippProcess(f"uac-{rate}", uac_command(
            binary, uas=(HOST, uas_port), proxy=system.address, local_port=free_port("udp"),
            rate=rate, calls=calls, stat_file=str(workdir / f"uac-{rate}.csv"),
            timeout_s=seconds * 3 + 30), workdir)
        uac.wait(seconds * 3 + 60)
        time.sleep(1.0)  # what is written or sent behind the calls
        after = _cpu_by_pid(pids)
        threads_after = {pid: _cpu_by_thread(pid) for pid in pids}
        elapsed = time.monotonic() - started
        stats = stats_of(workdir / f"uac-{rate}.csv")
    finally:
        uas.stop()
    done = stat_int(stats, "SuccessfulCall(C)")
    failed = stat_int(stats, "FailedCall(C)")
    per_call: dict[str, float] = {}
    idle_per_s: dict[str, float] = {}
    net: dict[str, float] = {}
    for pid in pids:
        name = categorize(pid)
        used = after.get(pid, 0.0) - before.get(pid, 0.0)
        per_call[name] = per_call.get(name, 0.0) + used * 1000 / max(done, 1)
        background = (before.get(pid, 0.0) - start.get(pid, 0.0)) / idle
        idle_per_s[name] = idle_per_s.get(name, 0.0) + background * 1000
        # Beyond what the process does idle over the same time: the work the calls made.
        net[name] = net.get(name, 0.0) + (used - background * elapsed) * 1000 / max(done, 1)
    # Where a switchboard process's CPU went, thread by thread (the SIP work runs in the
    # event loop's thread; Ray's own threads beside it).
    threads: dict[str, dict[str, float]] = {}
    for pid in pids:
        name = categorize(pid)
        if not (name.startswith(("worker", "controller", "switchboard"))):
            continue
        for thread, seconds in threads_after[pid].items():
            used = seconds - threads_before[pid].get(thread, 0.0)
            if used > 0:
                threads.setdefault(name, {})[thread] = round(used * 1000 / max(done, 1), 4)
    return {"rate": rate, "calls": done, "failed": failed, "seconds": round(elapsed, 2),
            "threads_ms_per_call": threads,
            "cpu_ms_per_call": {k: round(v, 4) for k, v in sorted(per_call.items())},
            "total_ms_per_call": round(sum(per_call.values()), 4),
            "idle_cpu_ms_per_s": {k: round(v, 2) for k, v in sorted(idle_per_s.items())},
            "net_cpu_ms_per_call": {k: round(v, 4) for k, v in sorted(net.items())}}


def run_local(rates: list[int], seconds: int, idle: float, workdir: Path) -> list[dict[str, Any]]:
    system = Switchboard()
    system.start(workdir / "local")
    time.sleep(system.warmup_s)
    try:
        root = system.proc.pid if system.proc is not None else -1
        return [measure(system, rate=r, seconds=seconds, idle=idle, workdir=workdir / "local",
                        categorize=lambda pid, root=root: "switchboard" if pid == root
                        else "other", ray_session=False) for r in rates]
    finally:
        system.stop()


def run_ray(rates: list[int], seconds: int, idle: float, workdir: Path, workers: int,
            store: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import ray

    # The worker actors import switchboard from this checkout (and its compiled core when
    # it was built in place): Ray starts them from the raylet's environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                       object_store_memory=100 * 1024 * 1024, _node_ip_address=HOST,
                       log_to_driver=False)
    gcs = str(context.address_info["gcs_address"])
    extra = ["--runtime", "ray", "--ray-address", gcs, "--workers", str(workers)]
    if store:
        config = workdir / "ray.toml"
        config.write_text(f'[dialog]\nstore = "{store}"\n', encoding="utf-8")
        extra += ["--config", str(config)]
    system = Switchboard(extra_args=extra)
    system.start_timeout = 180.0
    try:
        system.start(workdir / "ray")
        time.sleep(5.0)  # Ray is still busy for a few seconds after the workers answer
        controller = ray.get_actor("controller", namespace="switchboard")
        info = ray.get(controller.workers_info.remote())
        by_pid = {int(w["pid"]): int(w["index"]) for w in info}
        root = system.proc.pid if system.proc is not None else -1
        results = [measure(system, rate=r, seconds=seconds, idle=idle,
                           workdir=workdir / "ray",
                           categorize=lambda pid: _category(pid, root, by_pid),
                           ray_session=True) for r in rates]
        return results, [{"index": w["index"], "pid": w["pid"], "build": w.get("build")}
                         for w in info]
    finally:
        system.stop(30.0)
        ray.shutdown()


def _print(title: str, results: list[dict[str, Any]]) -> None:
    names = sorted({k for r in results for k in r["cpu_ms_per_call"]})
    for key, what in (("cpu_ms_per_call", "CPU ms per call"),
                      ("net_cpu_ms_per_call", "CPU ms per call beyond the idle rate")):
        print(f"\n{title}: {what}")
        print(f"{'calls/s':>8} {'calls':>6} {'failed':>6} {'total':>8}  " +
              "  ".join(f"{n:>14}" for n in names))
        for r in results:
            print(f"{r['rate']:>8} {r['calls']:>6} {r['failed']:>6} "
                  f"{sum(r[key].values()):>8.3f}  "
                  + "  ".join(f"{r[key].get(n, 0.0):>14.4f}" for n in names))
    for r in results:
        print(f"{r['rate']} calls/s, by thread (ms per call): " + "; ".join(
            f"{process}: " + ", ".join(f"{t} {v:.4f}" for t, v in sorted(
                threads.items(), key=lambda kv: -kv[1]))
            for process, threads in sorted(r["threads_ms_per_call"].items())))
    print("idle CPU ms per second (before each run): " + "; ".join(
        ", ".join(f"{k} {v:.1f}" for k, v in r["idle_cpu_ms_per_s"].items())
        for r in results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_plane", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="300,1000", help="calls/s, comma-separated")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of calls per rate")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds measured idle before each run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--store", default="", help="[dialog] store of the Ray run "
                        "(redis://127.0.0.1:PORT/0: a Redis you started)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results there too")
    parser.add_argument("--keep", type=Path,
                        help="keep SIPp's and switchboard's files in this directory")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    out: dict[str, Any] = {"cpus": os.cpu_count(), "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="bench-ray-plane-") as tmp:
        workdir = args.keep or Path(tmp)
        if not args.skip_local:
            out["local"] = run_local(rates, args.seconds, args.idle, workdir)
            _print("local runtime", out["local"])
        out["ray"], out["ray_workers"] = run_ray(rates, args.seconds, args.idle, workdir,
                                                 args.workers, args.store)
        for w in out["ray_workers"]:
            print(f"ray worker {w['index']} (pid {w['pid']}): switchboard.BUILD = {w['build']!r}")
        store = f", store {args.store}" if args.store else ""
        _print(f"ray runtime, {args.workers} worker(s){store}", out["ray"])
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
