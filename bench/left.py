"""Memory the process keeps after calls end, under whatever allocator it was started with.

`python -m bench.left --dialogs 10000` drives the sans-I/O core in this process with
`bench.heap`'s driver (no sockets, no loop): a warm-up of 500 calls set up and hung up, then N
calls at 1,000 a second of the driver's clock, every transaction timer run out (40 s), then
every call hung up the same way and every timer run out again. It prints the growth of the
process's anonymous RSS (`RssAnon`) per dialog held, per dialog left after the hang-up before
any full garbage collection (CPython's free lists still full, as in `serve` between its
idle collections), after one, and after asking the allocator to give free memory back
(`switchboard.allocator.give_back`: `malloc_trim` for the C library's, `mi_collect` for
mimalloc). Start it under the allocator to measure, e.g.

    PYTHONMALLOC=malloc LD_PRELOAD=libmimalloc.so.2 MIMALLOC_RESET_DELAY=0 \\
        python -m bench.left --dialogs 10000

(`switchboard/allocator.py` starts `serve` that way for `[runtime] allocator = "mimalloc"`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

from bench.heap import Driver
from switchboard.allocator import give_back


def rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def measure(dialogs: int) -> dict[str, object]:
    gc.disable()  # as `serve` runs: collections on a clock, not inside the measured steps
    driver = Driver()
    for n in range(1, 501):
        driver.call(n)
    driver.advance(40)
    for n in range(1, 501):
        driver.hang_up(n)
    driver.advance(40)
    gc.collect()
    give_back()
    base = rss_anon_kb()
    numbers = range(1001, 1001 + dialogs)
    for i, n in enumerate(numbers):
        driver.call(n)
        if i % 1000 == 999:
            driver.advance(1)
    driver.advance(40)
    gc.collect()
    held = rss_anon_kb()
    for i, n in enumerate(numbers):
        driver.hang_up(n)
        if i % 1000 == 999:
            driver.advance(1)
    driver.advance(40)
    uncollected = rss_anon_kb()
    gc.collect()
    left = rss_anon_kb()
    give_back()
    released = rss_anon_kb()

    def per_dialog(kb: int) -> float:
        return round((kb - base) * 1024 / dialogs, 1)

    return {
        "allocator": {k: os.environ.get(k, "") for k in ("PYTHONMALLOC", "LD_PRELOAD")},
        "dialogs": dialogs,
        "left_in_core": driver.counts(),
        "held_bytes_per_dialog": per_dialog(held),
        "left_before_full_collection_bytes_per_dialog": per_dialog(uncollected),
        "left_bytes_per_dialog": per_dialog(left),
        "left_after_give_back_bytes_per_dialog": per_dialog(released),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.left", description=__doc__.split("\n")[0])
    p.add_argument("--dialogs", type=int, default=10000)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.dialogs), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
