"""`[runtime] allocator = "mimalloc"`: `serve` starts itself again on mimalloc (the same PID,
the library mapped, CPython handing it every allocation) and carries calls as on its own
allocator; asked for a library that is not there, it says so and does not start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchboard.allocator import INSTALL_HINT
from tests.support.ports import HOST, free_port
from tests.support.server import StartServer
from tests.support.sipp import StartSipp, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "mimalloc.toml"
    path.write_text('[runtime]\nallocator = "mimalloc"\n', encoding="utf-8")
    return path


def test_serve_runs_on_mimalloc_and_carries_calls(
    sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path
) -> None:
    server = switchboard_server("--config", str(_config(tmp_path)))
    pid = server.proc.pid  # execve keeps it: the process the test started is the one serving
    maps = Path(f"/proc/{pid}/maps").read_text()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert "libmimalloc" in maps, "mimalloc is not mapped into serve"
    assert b"PYTHONMALLOC=malloc" in environ
    assert "memory allocator" not in server.output  # no warning: it runs on what it asked for

    calls = 50
    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port, calls=calls, trace_msg=False)
    uas.wait_listening()
    uac = sipp("uac", "uac.xml", remote=f"{HOST}:{server.udp_port}",
               local_port=free_port("udp"), calls=calls, rate=25,
               keys={"uas_port": uas_port}, trace_msg=False)
    wait_clean(uac, uas, calls=calls)


def test_a_missing_library_is_an_error_at_start(tmp_path: Path) -> None:
    # An empty library path for the dynamic linker's cache lookup is not enough to hide an
    # installed library, so the lookup itself is replaced in a child process.
    code = (
        "import sys, switchboard.allocator as a\n"
        "a.mimalloc_library = lambda: None\n"
        "from switchboard.cli import main\n"
        f"sys.argv = ['switchboard', 'serve', '--config', {str(_config(tmp_path))!r},"
        f" '--listen', 'udp:{HOST}:0', '--mi-http', '']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr  # click's usage error
    assert INSTALL_HINT in done.stderr
