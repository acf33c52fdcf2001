"""A short run of the whole-flow fuzzer (tests/fuzz/fuzz_flows.py).

`atheris.Fuzz()` ends the process, so the fuzzer runs as a subprocess: a bounded number of
inputs with a fixed seed, from the generated seeds (every step of every call flow), new
inputs and crash files kept in the test's tmp_path. Exit code 0 means no input made the core
raise anything it must not, and every read-out after every step (dialog:list and
statistics:get through the MI encoder, events, HEP, msgpack snapshots restored, /metrics,
log lines) stayed valid. What it found is then replayed through the build `switchboard
serve` runs (compiled when the build is fresh). Long campaigns: tests/fuzz/README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).parents[1] / "fuzz" / "fuzz_flows.py"
RUNS = 1_500


def test_flow_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (in the `test` extra: a missing fuzzer fails, never skips)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            f"-runs={RUNS}",
            # A ceiling for a slow, shared machine; the run normally ends on -runs first.
            "-max_total_time=45",
            "-timeout=10",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (
        f"fuzzer exit code {proc.returncode}, crash files {crashes}\n{proc.stderr[-8000:]}"
    )
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None, proc.stderr[-4000:]
    # The seeds alone are ~90 inputs: make sure the mutator really ran.
    assert int(done.group(1)) > 500, proc.stderr[-4000:]

    replay = subprocess.run(
        [sys.executable, str(FUZZER), "-runs=0", f"-artifact_prefix={tmp_path}/replay-",
         str(corpus)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "SWITCHBOARD_PURE": "0"},
    )
    assert replay.returncode == 0, replay.stderr[-8000:]
