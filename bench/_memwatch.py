"""Run `python -m switchboard ...` with its heap open to inspection, for finding what stays.

`python -m bench._memwatch DIR switchboard serve ...` starts tracemalloc (frames from
`BENCH_MEMWATCH_FRAMES`, default 6; 0 traces nothing) before switchboard is imported, then
runs the module. Each SIGUSR2 takes one look, named by the first word of DIR/next (written
by the bench before it signals). The words after it ask for more:

- `collect`: a full garbage collection first (it also empties CPython's free lists);
- `trim`: then ask the allocator to give its free pages back (`mi_collect`, `malloc_trim`);
- `record`: note the address of every object alive (and of every dict's and list's buffer);
- `born`: report the objects alive now that were not at the recording look — what survived
  the load, by type, and over how many pools and arenas it is spread (one survivor keeps a
  pool, and with it the whole arena, from being given back).

A look writes DIR/LABEL.snap (the tracemalloc snapshot, `tracemalloc.Snapshot.load`),
DIR/LABEL.json (tracemalloc's traced total, RSS, objects by type and by collector
generation), DIR/LABEL.pymalloc.txt (CPython's arenas, pools and free lists,
`sys._debugmallocstats`; empty of arenas while tracing), then DIR/LABEL.done.
`bench.memory --trace DIR` drives it and compares the looks (`trace_report`).

tracemalloc doubles the heap and slows every allocation: the RSS of a traced run is not the
figure; what it says is which lines hold what, and whether what stays is objects or freed
memory the allocator keeps (traced total back at the warm-up level while RSS is not).
"""

from __future__ import annotations

import array
import bisect
import contextlib
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from switchboard.allocator import give_back


def _type_counts(objects: list[Any]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)


POOL = 16 * 1024  # a pymalloc pool
ARENA = 1024 * 1024  # a pymalloc arena (most of them aligned so; enough to count spread)
# The addresses of everything alive at the look that recorded them, sorted: an array, not a
# set of ints, so that keeping it does not fill arenas of its own.
_seen = array.array("Q")


def _in(seen: array.array[int], address: int) -> bool:
    i = bisect.bisect_left(seen, address)
    return i < len(seen) and seen[i] == address


def _everything() -> list[Any]:
    """Every object reachable from the collector's containers, frozen ones included (the
    strings, numbers and untracked tuples and dicts hanging off them too)."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    try:
        found = {id(o): o for o in gc.get_objects()}
    finally:
        if frozen:
            gc.freeze()
    todo = list(found.values())
    while todo:
        for ref in gc.get_referents(*todo[-1000:]):
            if id(ref) not in found:
                found[id(ref)] = ref
                if not gc.is_tracked(ref):
                    todo.append(ref)
        del todo[-1000:]
    return list(found.values())


def _buffers(o: Any) -> int:
    """The address of a dict's key table or a list's item array (a separate allocation made
    again whenever the container grows or is emptied), or 0."""
    offset = 32 if type(o) is dict else 24 if type(o) is list else 0
    return ctypes.c_void_p.from_address(id(o) + offset).value or 0 if offset else 0


def born_since(seen: array.array[int]) -> dict[str, Any]:
    """What is alive now and was not at the recording look: by type, how many pools and
    arenas hold it, and a few of each type (pinned memory: one survivor keeps its pool and
    its arena)."""
    objects = _everything()
    new = [o for o in objects if not _in(seen, id(o))]
    pools = {id(o) // POOL for o in new}
    arenas = {id(o) // ARENA for o in new}
    old_buffers = [o for o in objects
                   if _in(seen, id(o)) and _buffers(o) and not _in(seen, _buffers(o))]
    samples: dict[str, list[str]] = {}
    for o in new:
        kind = f"{type(o).__module__}.{type(o).__qualname__}"
        if len(samples.setdefault(kind, [])) < 5:
            samples[kind].append(repr(o)[:160])
    return {
        "alive": len(objects), "new": len(new), "new_pools": len(pools),
        "new_arenas": len(arenas),
        "new_by_type": dict(_type_counts(new).most_common(40)),
        "samples": {k: samples[k] for k, _ in _type_counts(new).most_common(15)},
        "old_with_new_buffer": [f"{type(o).__qualname__} len {len(o)}: {repr(o)[:120]}"
                                for o in old_buffers[:40]],
    }


def _give_back() -> float:
    """`switchboard.allocator.give_back`, as the overload monitor runs it; the seconds it
    took."""
    started = time.perf_counter()
    give_back()
    return round(time.perf_counter() - started, 6)


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def look(out: Path) -> None:
    words = (out / "next").read_text().split()
    label = words[0] if words else "look"
    before: dict[str, Any] = {}
    if "collect" in words[1:] or "trim" in words[1:]:
        before = {"traced_kb": tracemalloc.get_traced_memory()[0] // 1024,
                  "rss_anon_kb": _status_kb("RssAnon"),
                  "young_tracked": [len(gc.get_objects(g)) for g in (0, 1)]}
    if "collect" in words[1:]:
        before["collected"] = gc.collect()
    if "trim" in words[1:]:
        before["trim_s"] = _give_back()
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(out / f"{label}.snap"))
    objects = gc.get_objects()
    by_type = _type_counts(objects)
    generations = [len(gc.get_objects(g)) for g in (0, 1, 2)]
    del objects
    traced, peak = tracemalloc.get_traced_memory()
    info = {
        "label": label,
        "traced_kb": traced // 1024,
        "traced_peak_kb": peak // 1024,
        "tracemalloc_overhead_kb": tracemalloc.get_tracemalloc_memory() // 1024,
        "rss_kb": _status_kb("VmRSS"),
        "rss_anon_kb": _status_kb("RssAnon"),
        "gc_count": list(gc.get_count()),
        "gc_tracked_by_generation": generations,
        "gc_frozen": gc.get_freeze_count(),
        "before_collect": before,
        "objects_by_type": dict(by_type.most_common(150)),
    }
    if "record" in words[1:]:
        objects = _everything()
        del _seen[:]
        _seen.extend(sorted({id(o) for o in objects} | {_buffers(o) for o in objects}))
        del objects
    if "born" in words[1:] and _seen:
        info["born_since_record"] = born_since(_seen)
    (out / f"{label}.json").write_text(json.dumps(info, indent=1))
    # _debugmallocstats writes to the C stderr: point fd 2 at a file meanwhile.
    _c_stderr_to(out / f"{label}.pymalloc.txt", sys._debugmallocstats)
    # mimalloc's own statistics (reserved, committed, reset, segments, pages), where it is
    # loaded: what it holds that is not in use shows there.
    mimalloc_stats = getattr(ctypes.CDLL(None), "mi_stats_print", None)
    if mimalloc_stats is not None:
        _c_stderr_to(out / f"{label}.mimalloc.txt", lambda: mimalloc_stats(None))
    (out / f"{label}.done").write_text("")


def _c_stderr_to(path: Path, write: Callable[[], object]) -> None:
    """Run `write`, which prints to the C stderr (fd 2), with fd 2 pointed at `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            write()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main() -> None:
    out_dir, module, *args = sys.argv[1:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("BENCH_MEMWATCH_FRAMES", "6"))
    if frames > 0:  # 0: no tracing, the looks count objects only (RSS as untraced)
        tracemalloc.start(frames)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        try:
            look(out)
        except Exception as exc:  # a failed look must not stop the server being measured
            (out / "error.txt").write_text(repr(exc))

    signal.signal(signal.SIGUSR2, on_signal)
    sys.argv = [module, *args]
    with contextlib.suppress(SystemExit):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
