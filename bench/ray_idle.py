"""What an empty Ray actor costs idle, thread by thread: the floor under the controller's
CPU per call (docs/ray.md, "What the control plane costs").

`python -m bench.ray_idle [--seconds 20]`

Starts a private Ray (2 CPUs, no dashboard), one actor with one method and nothing else,
waits for it to settle, then reads each of its threads' time on a CPU from
`/proc/PID/task/TID/schedstat` (nanoseconds, not the 10 ms ticks of `stat`) before and after
`--seconds`. Prints ms a second per thread name, and what that floor is per call at a few
rates.
"""

from __future__ import annotations

import argparse
import os
import time

RATES = (300, 1000)


def thread_times(pid: int) -> dict[int, tuple[str, int]]:
    """Thread id → (its name, nanoseconds it ran so far)."""
    out: dict[int, tuple[str, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ran = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(tid)] = (name, ran)
    return out


def idle_ms_per_s(pid: int, seconds: float) -> dict[str, float]:
    """ms a second each thread name of `pid` ran over `seconds`."""
    before = thread_times(pid)
    time.sleep(seconds)
    after = thread_times(pid)
    by_name: dict[str, float] = {}
    for tid, (name, ran) in after.items():
        ns = ran - before.get(tid, (name, 0))[1]
        by_name[name] = by_name.get(name, 0.0) + ns / 1e6 / seconds
    return dict(sorted(by_name.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_idle",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    @ray.remote(num_cpus=0)
    class Empty:
        def pid(self) -> int:
            return os.getpid()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = Empty.remote()  # type: ignore[attr-defined]
        pid = ray.get(actor.pid.remote())
        time.sleep(5.0)  # its start-up's own work done
        threads = idle_ms_per_s(pid, args.seconds)
    finally:
        ray.shutdown()
    total = sum(threads.values())
    print(f"an empty Ray {ray.__version__} actor, idle {args.seconds:.0f} s: "
          f"{total:.2f} ms a second")
    for name, ms in threads.items():
        if ms >= 0.05:
            print(f"  {name:20s} {ms:6.2f}")
    for rate in RATES:
        print(f"  = {total / rate:.4f} ms a call at {rate} calls/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
