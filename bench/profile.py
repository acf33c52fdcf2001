"""Where switchboard's time goes: one call-rate step with the proxy under cProfile.

`python -m bench --profile [--profile-rate R] [--duration S]` starts switchboard as
`python -m bench._profiled <file> switchboard serve ...` (cProfile counting CPU time, so the
event loop's idle waits do not show), offers R calls/s for S seconds, stops it with SIGTERM
(the CLI returns normally and the statistics are written) and keeps the functions with the
most own time. cProfile slows the proxy down (CPU per call under the
profiler is not comparable with the call-rate numbers); the shares between functions are what
it is for.
"""

from __future__ import annotations

import io
import pstats
from pathlib import Path
from typing import Any

from . import callrate
from .systems import Switchboard


def top_functions(stats_file: Path, limit: int = 25) -> tuple[str, list[dict[str, Any]]]:
    """The `limit` functions with the most own time: a printable table and the rows."""
    stats = pstats.Stats(str(stats_file))
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    ordered = sorted(stats.stats.items(),  # type: ignore[attr-defined]
                     key=lambda kv: kv[1][2], reverse=True)
    for (filename, line, name), (cc, nc, tt, ct, _callers) in ordered[:limit]:
        rows.append({
            "function": f"{_short(filename)}:{line}({name})",
            "calls": nc,
            "primitive_calls": cc,
            "own_s": round(tt, 4),
            "own_pct": round(100 * tt / total, 1) if total else 0.0,
            "cumulative_s": round(ct, 4),
        })
    out = io.StringIO()
    out.write(f"{'own %':>6} {'own s':>8} {'cum s':>8} {'calls':>9}  function\n")
    for r in rows:
        out.write(f"{r['own_pct']:>6.1f} {r['own_s']:>8.3f} {r['cumulative_s']:>8.3f} "
                  f"{r['calls']:>9}  {r['function']}\n")
    return out.getvalue(), rows


def _short(filename: str) -> str:
    for marker in ("/switchboard/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def run_profile(rate: float, duration: float, workdir: Path, out_stem: Path, *,
                sipp_binary: str) -> dict[str, Any]:
    stats_file = out_stem.with_name(out_stem.name + "-switchboard.prof")
    system = Switchboard(profile_to=stats_file)
    try:
        system.start(workdir)
        step = callrate.run_step(system, rate, duration, workdir / "profile",
                                 sipp_binary=sipp_binary)
    finally:
        system.stop(timeout=30)
    table, rows = top_functions(stats_file)
    text_file = out_stem.with_name(out_stem.name + "-profile.txt")
    text_file.write_text(
        f"switchboard under cProfile, {rate:g} calls/s for {duration:g} s: "
        f"{step.successful_calls} calls ok, {step.failed_calls} failed, "
        f"{step.cpu_ms_per_call} ms CPU per call (with the profiler's overhead)\n\n{table}"
    )
    return {"rate": rate, "duration_s": duration, "step": step.to_json(), "top": rows,
            "stats_file": stats_file.name, "text_file": text_file.name, "table": table}
