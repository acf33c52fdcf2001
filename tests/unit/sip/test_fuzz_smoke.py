"""A short run of the coverage-guided parser fuzzer (tests/fuzz/fuzz_parser.py).

`atheris.Fuzz()` ends the process, so the fuzzer runs as a subprocess: a bounded number of
inputs, seeded with tests/data, new inputs and crash files kept in the test's tmp_path. Exit
code 0 means no input made the parser, an accessor, the serializer round trip or the stream
framer raise anything but `ParseError`. The fuzzer runs the parser from source (coverage
needs bytecode); what it found is then replayed through the mypyc-compiled build, which is
what `switchboard serve` runs. Long campaigns: tests/fuzz/README.md.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fuzz import campaign, replay_compiled, runs_done

FUZZER = Path(__file__).parents[2] / "fuzz" / "fuzz_parser.py"
RUNS = 20_000


def test_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (in the `test` extra: a missing fuzzer fails, never skips)
    proc = campaign(FUZZER, tmp_path, RUNS, max_seconds=50)
    crashes = sorted(p.name for p in tmp_path.glob("*-*") if p.is_file())
    assert proc.returncode == 0 and not crashes, (
        f"fuzzer exit code {proc.returncode}, crash files {crashes}\n{proc.stderr[-8000:]}"
    )
    # Seeds alone are ~100 inputs: make sure the mutator really ran.
    assert runs_done(proc) > 1000, proc.stderr[-4000:]

    # The same inputs through the compiled build: it must agree that none of them crash.
    replay = replay_compiled(FUZZER, tmp_path)
    assert "SIP core compiled with mypyc" in replay.stderr, replay.stderr[-4000:]
    assert replay.returncode == 0, replay.stderr[-8000:]
