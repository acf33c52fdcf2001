"""`switchboard serve --runtime ray` as a user runs it: a separate driver process joins the
session's Ray cluster (`--ray-address`), places 2 workers and serves the MI; `switchboard mi`
talks to it; HEP capture mirrors the workers' SIP messages; SIGTERM stops it and removes the
detached controller.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.ray_service import import_ray, wait_controller_gone
from tests.support.hep import by_type
from tests.support.ports import HOST, free_port, free_port_block
from tests.support.server import REPO_ROOT, ServerStartError, SwitchboardServer
from tests.support.sip import options
from tests.support.sipp import Sipp

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]


@pytest.fixture
def port_each(tmp_path: Path) -> str:
    """A configuration file that gives worker i the listen port + i (`shared_port = false`)."""
    path = tmp_path / "port-each.toml"
    path.write_text("[runtime]\nshared_port = false\n", encoding="utf-8")
    return str(path)



def test_serve_runtime_ray_from_the_command_line(
    no_controller_left: str,
    port_each: str,
    switchboard_server: Callable[..., SwitchboardServer],
    sipp: Callable[..., Sipp],
) -> None:
    base = free_port_block(2)
    with contextlib.ExitStack() as stack:
        collector = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        collector.bind((HOST, 0))
        collector.settimeout(5)
        server = switchboard_server(
            "--config", port_each,
            "--runtime", "ray", "--ray-address", no_controller_left, "--workers", "2",
            "--hep", f"udp:{HOST}:{collector.getsockname()[1]}",
            name="switchboard-ray", port=base, ready_timeout=90.0,
        )
        ready = server.wait_for_output(r"\bready\b", stderr_only=True)
        assert f"udp:{HOST}:{base + 1}" in ready and f"tcp:{HOST}:{base + 1}" in ready, ready

        # Worker 1 answers an OPTIONS ping and mirrors both messages to the HEP collector,
        # as the local runtime does (the same worker wiring).
        ua = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        ua.bind((HOST, 0))
        ua.settimeout(5)
        ping = options(base + 1, ua.getsockname()[1], 70, "ray-hep-ping")
        ua.sendto(ping, (HOST, base + 1))
        reply = ua.recv(65535)
        assert reply.startswith(b"SIP/2.0 200 OK"), reply
        received, sent = (by_type(collector.recv(65535)) for _ in range(2))
        assert (received[15], sent[15]) == (ping, reply)
        assert struct.unpack("!H", sent[7])[0] == base + 1

    # One call through worker 1's port.
    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port).wait_listening()
    uac = sipp("uac", "uac.xml", remote=f"{HOST}:{base + 1}", local_port=free_port("udp"),
               keys={"uas_port": uas_port})
    for run in (uac.wait(), uas.wait()):
        assert not run.problems(1), run.describe()

    shown = subprocess.run(
        [sys.executable, "-m", "switchboard", "mi", "--url", server.mi_url,
         "statistics:get", "dialog:processed_dialogs"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"dialog:processed_dialogs": 1}
    hep = server.mi_result("statistics:get", statistics=["hep:"])
    assert hep["hep:dropped_packets"] == 0 and hep["hep:sent_packets"] >= 2 + 7, hep
    assert server.mi_result("dialog:list") == {"Dialogs": []}

    assert server.stop(timeout=15.0) == 0, server.describe()
    wait_controller_gone()


def test_a_worker_port_in_use_stops_serve_with_one_line(
    no_controller_left: str, port_each: str,
    switchboard_server: Callable[..., SwitchboardServer]
) -> None:
    """Worker 1 cannot bind base + 1: `serve` says which worker and why, exits 1, and leaves
    no controller behind."""
    base = free_port_block(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, base + 1))
        with pytest.raises(ServerStartError) as failed:
            switchboard_server(
                "--config", port_each,
                "--runtime", "ray", "--ray-address", no_controller_left, "--workers", "2",
                name="switchboard-ray", port=base, ready_timeout=90.0,
            )
    output = str(failed.value)
    assert "exited with code 1" in output, output
    (line,) = [ln for ln in output.splitlines() if "cannot start" in ln]
    assert "worker 1:" in line and "address already in use" in line.lower(), line
    wait_controller_gone()

