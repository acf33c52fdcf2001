"""Running a libFuzzer (atheris) fuzzer of tests/fuzz as a subprocess, as the smoke tests do:
`atheris.Fuzz()` ends its process, so a short campaign is a child process with a bounded
number of inputs and a fixed seed, and its corpus is then replayed through another build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def campaign(fuzzer: Path, tmp_path: Path, runs: int, max_seconds: int
             ) -> subprocess.CompletedProcess[str]:
    """`runs` inputs from seed 1, new inputs in `tmp_path/corpus`, crash files in `tmp_path`."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            str(fuzzer),
            f"-runs={runs}",
            # A ceiling for a slow, shared machine; the run normally ends on -runs first.
            f"-max_total_time={max_seconds}",
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


def runs_done(proc: subprocess.CompletedProcess[str]) -> int:
    """How many inputs the campaign ran (libFuzzer's closing `Done N runs`)."""
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None, proc.stderr[-4000:]
    return int(done.group(1))


def replay_compiled(fuzzer: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The campaign's corpus once more, through the compiled build (SWITCHBOARD_PURE=0)."""
    return subprocess.run(
        [sys.executable, str(fuzzer), "-runs=0", f"-artifact_prefix={tmp_path}/replay-",
         str(tmp_path / "corpus")],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "SWITCHBOARD_PURE": "0"},
    )
