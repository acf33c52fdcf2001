"""A short run of the coverage-guided parser fuzzer (tests/fuzz/fuzz_parser.py).

`atheris.Fuzz()` ends the process, so the fuzzer runs as a subprocess: a bounded number of
inputs, seeded with tests/data, new inputs and crash files kept in the test's tmp_path. Exit
code 0 means no input made the parser, an accessor, the serializer round trip or the stream
framer raise anything but `ParseError`. The fuzzer runs the parser from source (coverage
needs bytecode); what it found is then replayed through the mypyc-compiled build, which is
what `switchboard serve` runs. Long campaigns: tests/fuzz/README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).parents[2] / "fuzz" / "fuzz_parser.py"
RUNS = 20_000


def test_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (in the `test` extra: a missing fuzzer fails, never skips)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            f"-runs={RUNS}",
            # A ceiling for a slow, shared machine; the run normally ends on -runs first.
            "-max_total_time=50",
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
    crashes = sorted(p.name for p in tmp_path.glob("*-*") if p.is_file())
    assert proc.returncode == 0 and not crashes, (
        f"fuzzer exit code {proc.returncode}, crash files {crashes}\n{proc.stderr[-8000:]}"
    )
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None, proc.stderr[-4000:]
    # Seeds alone are ~100 inputs: make sure the mutator really ran.
    assert int(done.group(1)) > 1000, proc.stderr[-4000:]

    # The same inputs through the compiled build: it must agree that none of them crash.
    replay = subprocess.run(
        [sys.executable, str(FUZZER), "-runs=0", f"-artifact_prefix={tmp_path}/replay-",
         str(corpus)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "SWITCHBOARD_PURE": "0"},
    )
    assert "SIP core compiled with mypyc" in replay.stderr, replay.stderr[-4000:]
    assert replay.returncode == 0, replay.stderr[-8000:]
