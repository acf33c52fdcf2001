"""Operating switchboard: /metrics, /livez, /readyz, OPTIONS pings, JSON logs, HEP mirroring,
`check-config` and the deployment files, against real `switchboard serve` processes.

Tests with SIPp calls are marked `sipp` (the `sipp` fixture installs nothing: scripts/test
does). Everything stays on 127.0.0.1 with ports chosen at run time.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.api import ControlApi
from switchboard.config import load_config, parse_config
from switchboard.mi.http import start_mi_server
from tests.support.hep import by_type
from tests.support.ports import HOST, free_port
from tests.support.server import StartServer, SwitchboardServer
from tests.support.sip import options
from tests.support.sipp import StartSipp

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(server: SwitchboardServer, path: str, **headers: str) -> tuple[int, str, str]:
    """(status, content type, body) of `GET http://<mi host:port><path>`."""
    request = urllib.request.Request(f"http://{HOST}:{server.mi_port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(server: SwitchboardServer) -> Samples:
    status, content_type, body = get(server, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples[("switchboard_" + name, tuple(sorted(labels.items())))]


# --- probes and metrics ------------------------------------------------------------------------


def test_livez_and_readyz(switchboard: SwitchboardServer) -> None:
    assert get(switchboard, "/livez")[::2] == (200, "ok\n")
    assert get(switchboard, "/readyz")[::2] == (200, "ready\n")
    # Probes are GET (and HEAD) only; the MI path still answers POST only.
    assert get(switchboard, "/mi")[0] == 405


@pytest.mark.sipp
def test_metrics_count_sipp_calls(sipp: StartSipp, switchboard: SwitchboardServer) -> None:
    """Three basic calls through the proxy show up in one scrape: dialogs created, requests,
    2xx answers, setup times; nothing is left in progress afterwards."""
    before = scrape(switchboard)
    assert metric(before, "up") == 1
    assert metric(before, "dialogs_created_total") == 0
    calls = 3
    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port, calls=calls).wait_listening()
    uac = sipp(
        "uac", "uac.xml", remote=f"{HOST}:{switchboard.udp_port}", local_port=free_port("udp"),
        calls=calls, rate=10, keys={"uas_port": uas_port},
    )
    uac_result = uac.wait()
    uas_result = uas.wait(None if uac_result.returncode == 0 else 5.0)
    problems = uac_result.problems(calls) + uas_result.problems(calls)
    assert not problems, problems

    # A dialog ends when the 200 to its BYE is relayed; allow the last one a moment.
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(switchboard)
        if metric(samples, "dialogs", state="confirmed") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert metric(samples, "dialogs", state="confirmed") == 0
    assert metric(samples, "dialogs", state="early") == 0
    assert metric(samples, "dialogs_created_total") == calls
    assert metric(samples, "dialogs_failed_total") == 0
    retransmitted = metric(samples, "retransmissions_total")
    # INVITE, ACK and BYE per call, plus whatever SIPp retransmitted.
    # By method: one INVITE, ACK and BYE per call (plus whatever SIPp retransmitted).
    by_method = {dict(labels)["method"]: value for (name, labels), value in samples.items()
                 if name == "switchboard_sip_requests_received_total"}
    assert by_method["ACK"] == by_method["BYE"] == calls
    assert sum(by_method.values()) == 3 * calls + retransmitted
    assert metric(samples, "sip_requests_forwarded_total") >= 3 * calls
    # A 2xx for each INVITE and each BYE.
    assert metric(samples, "sip_responses_sent_total", code_class="2xx") == 2 * calls
    assert metric(samples, "sip_responses_sent_total", code_class="4xx") == 0
    assert metric(samples, "call_setup_seconds_count") == calls
    assert metric(samples, "call_setup_seconds_bucket", le="+Inf") == calls
    assert 0 < metric(samples, "call_setup_seconds_sum") < 5 * calls
    assert metric(samples, "transfers_total", result="ok") == 0
    assert metric(samples, "hold_operations_total", op="hold", result="ok") == 0
    assert samples[("switchboard_build_info", (
        ("python", sys.version.split()[0]), ("runtime", "local"), ("version", "0.1.0"),
    ))] == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    # The outcome counters are statistics too (statistics:get), with the OpenSIPS ones.
    stats = switchboard.mi_result("statistics:get", statistics=["all"])
    assert stats["dialog:processed_dialogs"] == calls
    assert stats["callops:transfer_ok"] == 0 and stats["callops:hold_ok"] == 0


def test_metrics_and_probes_need_no_token(
    switchboard_server: StartServer, tmp_path: Path
) -> None:
    config = tmp_path / "sb.toml"
    config.write_text('[mi]\ntoken = "s3cret"\n')
    server = switchboard_server("--config", str(config))
    assert get(server, "/livez")[0] == 200
    assert get(server, "/readyz")[0] == 200
    assert metric(scrape(server), "up") == 1
    request = urllib.request.Request(
        server.mi_url, data=b'{"jsonrpc":"2.0","method":"which","id":1}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    with err.value:
        assert err.value.code == 401


def test_openmetrics_is_negotiated(switchboard: SwitchboardServer) -> None:
    status, content_type, body = get(
        switchboard, "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    assert re.search(r"^switchboard_dialogs_created_total 0(\.0)?$", body, re.M), body


async def test_readyz_lists_what_is_not_ready() -> None:
    problems = ["starting"]

    async def ready() -> list[str]:
        return list(problems)

    # The probes never touch the API.
    server = await start_mi_server(cast(ControlApi, object()), HOST, 0, ready=ready)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://{HOST}:{server.port}"
            async with session.get(base + "/readyz") as response:
                assert response.status == 503
                assert await response.text() == "not ready: starting\n"
            problems.clear()
            async with session.get(base + "/readyz") as response:
                assert response.status == 200
            async with session.head(base + "/livez") as response:
                assert response.status == 200
            async with session.get(base + "/metrics") as response:
                assert response.status == 404  # no metrics renderer given
    finally:
        await server.close()


# --- SIP OPTIONS pings -------------------------------------------------------------------------


@pytest.mark.parametrize("max_forwards", [70, 0])
def test_options_ping_is_answered_200(switchboard: SwitchboardServer, max_forwards: int) -> None:
    """OpenSIPS/Kamailio dispatchers probe with OPTIONS (some with Max-Forwards 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(5)
        local_port = sock.getsockname()[1]
        call_id = f"ping-{max_forwards}-{local_port}"
        sock.sendto(options(switchboard.udp_port, local_port, max_forwards, call_id),
                    switchboard.udp_address)
        reply = sock.recv(65535).decode()
    head = reply.split("\r\n\r\n", 1)[0].split("\r\n")
    assert head[0] == "SIP/2.0 200 OK", reply
    assert f"Call-ID: {call_id}" in head
    assert any(line.startswith("Allow:") and "INVITE" in line for line in head), reply


# --- HEP mirroring ------------------------------------------------------------------------------


def test_hep_mirrors_what_is_received_and_sent(switchboard_server: StartServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        collector.bind((HOST, 0))
        collector.settimeout(5)
        server = switchboard_server("--hep", f"udp:{HOST}:{collector.getsockname()[1]}")
        ua.bind((HOST, 0))
        ua.settimeout(5)
        ua_port = ua.getsockname()[1]
        ping = options(server.udp_port, ua_port, 70, "hep-ping")
        ua.sendto(ping, server.udp_address)
        reply = ua.recv(65535)
        captured = [by_type(collector.recv(65535)) for _ in range(2)]
    received, sent = captured
    assert received[15] == ping
    assert (socket.inet_ntoa(received[3]), struct.unpack("!H", received[7])[0]) == (HOST, ua_port)
    assert struct.unpack("!H", received[8])[0] == server.udp_port
    assert sent[15] == reply
    assert struct.unpack("!H", sent[7])[0] == server.udp_port
    assert struct.unpack("!H", sent[8])[0] == ua_port
    assert abs(struct.unpack("!I", sent[9])[0] - time.time()) < 60
    stats = server.mi_result("statistics:get", statistics=["hep:"])
    assert stats == {"hep:dropped_packets": 0, "hep:sent_packets": 2}


# --- logs -----------------------------------------------------------------------------------


def test_serve_logs_json_lines(switchboard_server: StartServer) -> None:
    server = switchboard_server("--log-format", "json")
    ready = json.loads(server.wait_for_output(r'"event": "ready"', stderr_only=True))
    assert ready["level"] == "info" and "ready" in ready["message"]
    assert server.stop() == 0
    lines = [line for line in server.output.splitlines() if not line.startswith("[stdout]")]
    records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
    assert [r.get("event") for r in records][-1] == "stopping"


# --- check-config ---------------------------------------------------------------------------


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", "check-config", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_check_config_accepts_the_example_and_prints_it_back(tmp_path: Path) -> None:
    example = DEPLOY / "switchboard.toml"
    ok = check_config(str(example))
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{example}: ok"), ok.stderr
    shown = check_config(str(example), "--print")
    assert shown.returncode == 0, shown.stderr
    assert parse_config(shown.stdout) == load_config(example)
    # Defaults are written out: every section is there.
    for section in ("listen", "mi", "runtime", "callops", "transfer", "events", "dialog",
                    "proxy", "script", "log", "hep"):
        assert f"[{section}]" in shown.stdout
    secret = tmp_path / "secret.toml"
    secret.write_text('[mi]\ntoken = "s3cret"\n')
    hidden = check_config(str(secret), "--print")
    assert "s3cret" not in hidden.stdout and "<hidden>" in hidden.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[mi]\nhttp = "127.0.0.1:8888"\n\n[hep]\ncollector = "tcp:1.2.3.4:9060"\n',
         ":5: hep.collector: expected udp:IP:PORT"),
        ('[log]\nformat = "xml"\n', ":2: log.format: expected one of json, text"),
        ("[listen]\nsocket = []\n", ":2: listen.socket: unknown key"),
        ("[proxy\n", ": (file): not valid TOML"),
        ('[script]\npath = "/nonexistent/route.py"\n', ": script.path: no such file"),
    ],
)
def test_check_config_names_the_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = check_config(str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: {path}{expected}" in result.stderr, result.stderr


# --- deployment files -------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong with the unit beyond its ExecStart binary
    not being installed on the test machine."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (scripts/test installs systemd)"

    def verify(unit: Path) -> list[str]:
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True, text=True, timeout=60,
        )
        return [
            line for line in (result.stdout + result.stderr).splitlines()
            if line.strip()
            and "/opt/switchboard/bin/switchboard is not executable" not in line
            # Containers without systemd as init lack the default targets.
            and "sysinit.target" not in line and "basic.target" not in line
        ]

    unit = tmp_path / "switchboard.service"
    unit.write_text((DEPLOY / "switchboard.service").read_text())
    assert verify(unit) == []
    # The check itself works: a broken copy is reported.
    unit.write_text(unit.read_text().replace("Type=exec", "Type=sometimes\nBogusKey=1"))
    problems = verify(unit)
    assert any("BogusKey" in p for p in problems) and any("service type" in p for p in problems)


def test_containerfile_uses_the_shipped_pieces() -> None:
    """The recipe is not built here; check that what it copies exists and the config it
    bakes in is valid."""
    recipe = (DEPLOY / "Containerfile").read_text()
    for line in recipe.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
    assert "check-config /etc/switchboard/switchboard.toml" in recipe
    assert "/readyz" in recipe
