"""SIGHUP on `switchboard serve --runtime ray`: the driver has every worker read its `[tls]`
files again. Two workers share one `tls:` address; after the certificate files are replaced
and the driver gets SIGHUP, a connection set up before keeps being answered, and every new
connection, whichever worker the kernel gives it to, is shown the new certificate.

Which worker accepted a connection is told by the hand-off counters: its OPTIONS carries a
Call-ID that worker 0 owns, so a connection worker 1 accepted hands the request to worker 0
and gets the answer back over the channel (`handoff:sent` moves), and one worker 0 accepted
moves nothing.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.cluster.owner import hashed_worker
from tests.cluster.ray_service import import_ray, wait_controller_gone
from tests.support.certs import make_pki
from tests.support.ports import HOST, free_port
from tests.support.server import SwitchboardServer

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.interop]

WORKERS = (0, 1)
# New connections tried, at most, until each worker has accepted one: the kernel spreads
# connections from different source ports over the workers' listening sockets.
MAX_CONNECTIONS = 64



def _owned_by(worker: int) -> str:
    """A fresh Call-ID that `worker` owns."""
    while True:
        call_id = f"ray-tls-reload-{secrets.token_hex(6)}@{HOST}"
        if hashed_worker(call_id.encode(), WORKERS) == worker:
            return call_id


def _options(tls_port: int, local_port: int, call_id: str) -> bytes:
    return (
        f"OPTIONS sip:{HOST}:{tls_port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {HOST}:{local_port};branch=z9hG4bK-{call_id}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:monitor@{HOST}>;tag=mon1\r\n"
        f"To: <sip:{HOST}:{tls_port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _ask(conn: ssl.SSLSocket, tls_port: int, call_id: str = "") -> bytes:
    """Send an OPTIONS over `conn` and return the status line of its answer."""
    call_id = call_id or f"ray-tls-reload-{secrets.token_hex(6)}@{HOST}"
    conn.sendall(_options(tls_port, conn.getsockname()[1], call_id))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65535)
        assert chunk, f"the connection was closed; received so far: {data!r}"
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _connect(ctx: ssl.SSLContext, tls_port: int) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, tls_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _common_name(conn: ssl.SSLSocket) -> str:
    cert = conn.getpeercert()
    assert cert, "no peer certificate"
    names = [value for rdn in cert["subject"] for key, value in rdn if key == "commonName"]
    assert len(names) == 1, cert
    return str(names[0])


def test_sighup_reloads_the_certificate_on_every_worker(
    no_controller_left: str,
    switchboard_server: Callable[..., SwitchboardServer],
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    first = pki.issue("first", common_name="before-reload")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    os.replace(first.certificate, cert_path)
    os.replace(first.private_key, key_path)
    config = tmp_path / "switchboard.toml"
    # Both workers on one tls: address (`[runtime] shared_port`, said here in case the
    # default changes).
    config.write_text(f'[tls]\ncertificate = "{cert_path}"\nprivate_key = "{key_path}"\n'
                      "[runtime]\nshared_port = true\n", encoding="utf-8")
    tls_port = free_port("tcp")
    server = switchboard_server(
        "--config", str(config), "--listen", f"tls:{HOST}:{tls_port}",
        "--runtime", "ray", "--ray-address", no_controller_left, "--workers", "2",
        name="switchboard-ray", tcp=False, ready_timeout=90.0,
    )
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))

    with _connect(ctx, tls_port) as before:
        assert _common_name(before) == "before-reload"
        assert _ask(before, tls_port) == b"SIP/2.0 200 OK"

        # A second certificate from the same CA, moved into place as a deployment would.
        second = pki.issue("second", common_name="after-reload")
        os.replace(second.certificate, cert_path)
        os.replace(second.private_key, key_path)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_output(re.escape("TLS certificates reloaded on every worker"),
                               timeout=30.0, stderr_only=True)

        # The connection set up before is neither dropped nor renegotiated.
        assert _ask(before, tls_port) == b"SIP/2.0 200 OK"
        assert _common_name(before) == "before-reload"

        # Every worker answered the reload before the driver logged it: no new connection
        # may still see the old certificate, whichever worker accepted it.
        seen: dict[int, list[str]] = {w: [] for w in WORKERS}
        for _ in range(MAX_CONNECTIONS):
            handed = _handed(server)
            with _connect(ctx, tls_port) as after:
                name = _common_name(after)
                assert _ask(after, tls_port, _owned_by(0)) == b"SIP/2.0 200 OK"
            seen[0 if _handed(server) == handed else 1].append(name)
            if all(seen.values()):
                break
        assert all(seen.values()), f"one worker accepted every connection: {seen}"
        assert {name for names in seen.values() for name in names} == {"after-reload"}, seen

    assert server.proc.poll() is None, server.describe()
    assert "not reloaded" not in server.output, server.describe()
    assert server.stop(timeout=15.0) == 0, server.describe()
    wait_controller_gone()


def _handed(server: SwitchboardServer) -> int:
    """Messages the workers handed each other so far (summed over the workers)."""
    stats = server.mi_result("statistics:get", statistics=["handoff:"])
    return int(stats["handoff:sent"])

