"""Run `python -m switchboard ...` with every garbage collection timed.

`python -m bench._gcwatch OUT.json switchboard serve ...`: a `gc.callbacks` hook notes the
generation and the wall time of each collection; when the module returns or exits (SIGTERM
makes `switchboard serve` return) the pauses go to OUT.json as
`{"collections": [[generation, start (monotonic s), seconds, collected], ...]}`. For telling
whether a latency tail is the collector.
"""

from __future__ import annotations

import gc
import json
import runpy
import sys
import time
from typing import Any


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    records: list[list[Any]] = []
    started: list[float] = [0.0]

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif len(records) < 1_000_000:
            records.append([info.get("generation"), round(time.monotonic(), 4),
                            round(time.perf_counter() - started[0], 6), info.get("collected")])

    gc.callbacks.append(watch)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        gc.callbacks.remove(watch)
        with open(out, "w") as f:
            json.dump({"collections": records}, f)


if __name__ == "__main__":
    main()
