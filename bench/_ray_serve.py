"""`python -m bench._ray_serve serve --runtime ray ...`: switchboard's CLI on a private Ray.

The bench's Ray systems run `switchboard serve --runtime ray` through this module, which first
starts a Ray of its own for it, small and on loopback only: `address="local"` (never a cluster
another engineer's `ray start` made on this machine), every Ray address on 127.0.0.1
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` must be set before `ray` is imported, as in
tests/cluster/conftest.py), no dashboard, usage statistics off, a 100 MB object store and
`BENCH_RAY_CPUS` CPUs (default: the machine's). `serve` finds Ray initialised and joins it;
when `serve` returns (SIGTERM), this process shuts that Ray down. Ray's processes (GCS,
raylet, the worker actors) are descendants of this one, so the bench counts their CPU and
memory as the system's.
"""

from __future__ import annotations

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

HOST = "127.0.0.1"


def main() -> int:
    import ray

    cpus = int(os.environ.get("BENCH_RAY_CPUS") or os.cpu_count() or 2)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _node_ip_address=HOST,
        log_to_driver=True,
    )
    try:
        from switchboard.cli import main as cli

        try:
            cli.main(args=sys.argv[1:], prog_name="switchboard", standalone_mode=True)
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else 1
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
