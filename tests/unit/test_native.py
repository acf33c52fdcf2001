"""The two builds (switchboard/_native.py): the SIP core and the glue around it compiled by
mypyc at install, or their Python source — all of them one way — and never a compiled module
older than its source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import switchboard
import switchboard.actors.worker
import switchboard.sip.proxy
import switchboard.transport.udp
from switchboard import _native

REPO = Path(__file__).resolve().parents[2]
# Whether each compiled module runs from its source (True) or its build, one word each.
PROBE = (
    "import switchboard, switchboard.sip.proxy as p, switchboard.sip.message as m, "
    "switchboard.actors.worker as w, switchboard.transport.udp as u; "
    "from switchboard.sip import parse_message; "
    "msg = parse_message(b'OPTIONS sip:a@127.0.0.1 SIP/2.0\\r\\nCall-ID: x\\r\\n\\r\\n'); "
    "print(switchboard.COMPILED, *(x.__file__.endswith('.py') for x in (p, m, w, u)), "
    "msg.call_id, switchboard.BUILD)"
)
ALL_SOURCE = ["False", "True", "True", "True", "True", "x"]


def _probe(pythonpath: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=60, cwd=pythonpath,
        env={**os.environ, "PYTHONPATH": str(pythonpath), **env},
    )


def _files(*modules: object) -> list[str]:
    found = [getattr(module, "__file__", None) for module in modules]
    assert all(isinstance(name, str) for name in found)
    return [str(name) for name in found]


def test_the_suite_runs_the_compiled_build() -> None:
    # What `switchboard serve` runs is what the tests test (scripts/test builds it); the
    # source build has its own run (SWITCHBOARD_PURE=1 in scripts/test).
    files = _files(switchboard.sip.proxy, switchboard.actors.worker, switchboard.transport.udp)
    if _native.pure_requested():
        assert not switchboard.COMPILED
        assert all(name.endswith(".py") for name in files)
        return
    assert switchboard.COMPILED, switchboard.BUILD
    assert not any(name.endswith(".py") for name in files), files


def test_pure_build_is_chosen_on_request() -> None:
    proc = _probe(REPO, SWITCHBOARD_PURE="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:6] == ALL_SOURCE
    assert "SWITCHBOARD_PURE=1" in proc.stdout


def _copy_of_the_tree(to: Path) -> None:
    shutil.copytree(REPO / "switchboard", to / "switchboard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for _, group in _native.groups():
        for shared in REPO.glob(f"{group}__mypyc*"):
            shutil.copy(shared, to)


def test_a_compiled_core_older_than_its_source_is_not_used(tmp_path: Path) -> None:
    # A copy of the installed tree whose proxy.py changed after the build.
    _copy_of_the_tree(tmp_path)
    with open(tmp_path / "switchboard" / "sip" / "proxy.py", "a") as source:
        source.write("\n# edited after the build\n")
    proc = _probe(tmp_path, SWITCHBOARD_PURE="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:6] == ALL_SOURCE
    assert "older than its source" in proc.stderr


def test_glue_older_than_its_source_takes_the_core_to_source_too(tmp_path: Path) -> None:
    # The compiled glue calls the compiled core directly: an edited worker.py means every
    # compiled module runs from source, the core's too.
    _copy_of_the_tree(tmp_path)
    with open(tmp_path / "switchboard" / "actors" / "worker.py", "a") as source:
        source.write("\n# edited after the build\n")
    proc = _probe(tmp_path, SWITCHBOARD_PURE="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:6] == ALL_SOURCE
    assert "older than its source" in proc.stderr


def test_digest_covers_every_compiled_module_but_the_core_package_init() -> None:
    names = {path.relative_to(_native.PACKAGE_DIR).as_posix()
             for path in _native.compiled_sources()}
    assert {"sip/proxy.py", "sip/message.py", "actors/worker.py", "transport/udp.py"} <= names
    assert "sip/__init__.py" not in names
    assert len(_native.source_digest()) == 64
    assert [group for _, group in _native.groups()] == ["switchboard_core", "switchboard_glue"]
    assert _native.module_name(_native.PACKAGE_DIR / "actors" / "worker.py") == (
        "switchboard.actors.worker")


def test_a_source_install_removes_every_compiled_module_of_a_build() -> None:
    # setup.py with SWITCHBOARD_PURE=1 deletes `built_files`: nothing compiled may stay to
    # shadow a source, the glue's modules and library included.
    built = set(_native.built_files(REPO))
    beside_sources = {path for source in _native.compiled_sources()
                      for path in source.parent.glob(source.stem + ".*")
                      if path.suffix in (".so", ".pyd")}
    assert beside_sources <= built
    libraries = {path.name.split("__mypyc")[0] for path in built if path.parent == REPO}
    if switchboard.COMPILED:  # a build in place: one compiled module per source, two libraries
        assert len(beside_sources) == len(_native.compiled_sources())
        assert libraries == {"switchboard_core", "switchboard_glue"}
