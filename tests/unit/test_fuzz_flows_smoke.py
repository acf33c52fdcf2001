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

from pathlib import Path

from tests.support.fuzz import campaign, replay_compiled, runs_done

FUZZER = Path(__file__).parents[1] / "fuzz" / "fuzz_flows.py"
RUNS = 1_500


def test_flow_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (in the `test` extra: a missing fuzzer fails, never skips)
    proc = campaign(FUZZER, tmp_path, RUNS, max_seconds=45)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (
        f"fuzzer exit code {proc.returncode}, crash files {crashes}\n{proc.stderr[-8000:]}"
    )
    # The seeds alone are ~90 inputs: make sure the mutator really ran.
    assert runs_done(proc) > 500, proc.stderr[-4000:]

    replay = replay_compiled(FUZZER, tmp_path)
    assert replay.returncode == 0, replay.stderr[-8000:]
