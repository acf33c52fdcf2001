"""Instructions per call, counted, not timed: the instrument that resolves a few per cent.

    python -m bench.instructions [--calls N] [--base M] [--keep DIR]

Runs `python -m bench.gluepath --untimed N` and `--untimed M` under `valgrind
--tool=callgrind` (hash seed fixed, address randomisation off) and prints, per call (the two
counts' difference over N - M):

- `total`: every instruction of the process. It also holds the bench's own message building
  and start-up, which move it by up to ±25 k a call from one pair of runs to the next;
- `listener`: `UdpEndpoint.datagram_received` inclusive — what `serve` does with each
  datagram, core and glue, the kernel's part left out. The steadier of the two;
- `timers`: `Worker._on_timer` inclusive (the bench runs the timers once a call, `serve` on a
  10 ms grid: read it as the direction only).

A timed bench on a shared 2-core VM spreads by 5 to 15 % between runs; these counts by about
1 %. `bench/README.md` ("CPU levers") quotes them for each lever. Needs valgrind
(Debian `valgrind`); takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The functions whose inclusive count is read, by the C symbol mypyc gives them.
FUNCTIONS = {
    "listener": "CPyDef_switchboard___transport___udp___UdpEndpoint___datagram_received",
    "timers": "CPyDef_switchboard___actors___worker___Worker____on_timer",
}
_TOTAL = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+PROGRAM TOTALS")
_LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(?:\*\s+)?(\S+?):(\S+) \[")


def counts(annotated: str) -> dict[str, int]:
    """`total` and the inclusive count of each of `FUNCTIONS`, from the text of
    `callgrind_annotate --inclusive=yes` (call-edge lines, `=>`, are skipped)."""
    out: dict[str, int] = {}
    for line in annotated.splitlines():
        if "=>" in line:
            continue
        m = _TOTAL.match(line)
        if m is not None:
            out["total"] = int(m.group(1).replace(",", ""))
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        for name, symbol in FUNCTIONS.items():
            if m.group(3) == symbol and name not in out:
                out[name] = int(m.group(1).replace(",", ""))
    return out


def per_call(more: dict[str, int], fewer: dict[str, int], calls: int) -> dict[str, float]:
    """What `calls` calls more cost, per call, for each count both runs have."""
    return {k: (more[k] - fewer[k]) / calls for k in more if k in fewer}


def _count(calls: int, workdir: Path) -> dict[str, int]:
    out = workdir / f"callgrind.{calls}"
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(
        ["setarch", "x86_64", "-R", "valgrind", "--tool=callgrind",
         f"--callgrind-out-file={out}", sys.executable, "-m", "bench.gluepath",
         "--untimed", str(calls)],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                          check=True, capture_output=True, text=True).stdout
    return counts(text)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1300, help="the longer run's calls (1300)")
    p.add_argument("--base", type=int, default=300, help="the shorter run's calls (300)")
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = p.parse_args()
    if args.calls <= args.base:
        p.error("--calls must be more than --base")
    for tool in ("valgrind", "callgrind_annotate", "setarch"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (Debian: valgrind, util-linux)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        more, fewer = _count(args.calls, workdir), _count(args.base, workdir)
    for name, value in per_call(more, fewer, args.calls - args.base).items():
        print(f"{name:>9}: {value / 1000:9.1f} k instructions a call")


if __name__ == "__main__":
    main()
