"""The SIP core's two builds (switchboard/_native.py): compiled by mypyc at install, or its
Python source — and never a compiled module older than its source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import switchboard
import switchboard.sip.proxy
from switchboard import _native

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import switchboard, switchboard.sip.proxy as p; "
    "from switchboard.sip import parse_message; "
    "m = parse_message(b'OPTIONS sip:a@127.0.0.1 SIP/2.0\\r\\nCall-ID: x\\r\\n\\r\\n'); "
    "print(switchboard.COMPILED, p.__file__.endswith('.py'), m.call_id, switchboard.BUILD)"
)


def _probe(pythonpath: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=60, cwd=pythonpath,
        env={**os.environ, "PYTHONPATH": str(pythonpath), **env},
    )


def test_the_suite_runs_the_compiled_core() -> None:
    # What `switchboard serve` runs is what the tests test (scripts/test builds it); the
    # source build has its own run (SWITCHBOARD_PURE=1 in scripts/test).
    if _native.pure_requested():
        assert not switchboard.COMPILED
        assert switchboard.sip.proxy.__file__ is not None
        assert switchboard.sip.proxy.__file__.endswith(".py")
        return
    assert switchboard.COMPILED, switchboard.BUILD
    assert switchboard.sip.proxy.__file__ is not None
    assert not switchboard.sip.proxy.__file__.endswith(".py")


def test_pure_build_is_chosen_on_request() -> None:
    proc = _probe(REPO, SWITCHBOARD_PURE="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == ["False", "True", "x"]
    assert "SWITCHBOARD_PURE=1" in proc.stdout


def test_a_compiled_core_older_than_its_source_is_not_used(tmp_path: Path) -> None:
    # A copy of the installed tree whose proxy.py changed after the build.
    shutil.copytree(REPO / "switchboard", tmp_path / "switchboard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for shared in REPO.glob(f"{_native.GROUP}__mypyc*"):
        shutil.copy(shared, tmp_path)
    with open(tmp_path / "switchboard" / "sip" / "proxy.py", "a") as source:
        source.write("\n# edited after the build\n")
    proc = _probe(tmp_path, SWITCHBOARD_PURE="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == ["False", "True", "x"]
    assert "older than its source" in proc.stderr


def test_digest_covers_every_core_module_but_the_package_init() -> None:
    names = {path.name for path in _native.core_sources()}
    assert "proxy.py" in names and "message.py" in names
    assert "__init__.py" not in names
    assert len(_native.source_digest()) == 64
