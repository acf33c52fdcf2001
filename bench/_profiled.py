"""Run `python -m switchboard ...` under cProfile counting CPU time, not wall time.

`python -m bench._profiled OUT.prof switchboard serve ...`: the event loop's idle waits would
dominate a wall-clock profile; with `time.process_time` only the work shows. The statistics
are written when the module returns or exits (SIGTERM makes `switchboard serve` return).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
