"""The libFuzzer (atheris) fuzzers of tests/fuzz: how one starts, and how a test runs one.

A fuzzer (`python tests/fuzz/fuzz_*.py [flags] [CORPUS_DIR ...]`) calls `load_core` before it
imports the code it instruments and reads its command line with `libfuzzer_arguments`.

The smoke tests run one as a subprocess: `atheris.Fuzz()` ends its process, so a short
campaign is a child process with a bounded number of inputs and a fixed seed, and its corpus
is then replayed through another build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def load_core(fuzzer: str) -> None:
    """Import switchboard from its Python source unless SWITCHBOARD_PURE says otherwise:
    coverage needs bytecode to instrument. Says on stderr which build runs."""
    os.environ.setdefault("SWITCHBOARD_PURE", "1")
    import switchboard

    print(f"{fuzzer}: SIP core {switchboard.BUILD}", file=sys.stderr)


def libfuzzer_arguments(argv: list[str], fuzzer: str) -> tuple[list[str], list[str]]:
    """`argv` split into libFuzzer's flags and the corpus directories. Without a directory,
    new inputs go to a fresh temporary one; inputs are at most 4 kB unless `-max_len` says
    otherwise."""
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix=f"switchboard-{fuzzer.replace('_', '-')}-corpus-")]
        print(f"{fuzzer}: new inputs go to {dirs[0]}", file=sys.stderr)
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append("-max_len=4096")
    return flags, dirs


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
