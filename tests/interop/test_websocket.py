"""SIP over WebSocket (RFC 7118) through `switchboard serve`, with a client we did not write:
JsSIP (npm `jssip`) under node, the `ws` package as its WebSocket, over ws: and wss: (the
test CA's certificate, trusted through NODE_EXTRA_CA_CERTS). JsSIP registers with a Contact
on a random `.invalid` host, so every request toward it must go over its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import jssip
from tests.support.certs import TestPki, make_pki
from tests.support.events import EventCollector
from tests.support.jssip import JsSipPhone
from tests.support.ports import HOST, free_port
from tests.support.server import SwitchboardServer, wait_confirmed
from tests.support.sipp import Sipp, assert_clean, received, sip_messages

pytestmark = [pytest.mark.interop]

StartSipp = Callable[..., Sipp]


class WsSwitchboard:
    def __init__(self, server: SwitchboardServer, ws_port: int, wss_port: int,
                 pki: TestPki) -> None:
        self.server = server
        self.ports = {"ws": ws_port, "wss": wss_port}
        self.pki = pki

    def url(self, transport: str) -> str:
        return f"{transport}://{HOST}:{self.ports[transport]}"


@pytest.fixture
def ws_switchboard(switchboard_server: Callable[..., SwitchboardServer], tmp_path: Path,
                   events: EventCollector) -> WsSwitchboard:
    """`switchboard serve` on udp:P, ws:Q and wss:R (a certificate from a test CA), its
    events to `events`."""
    pki = make_pki(tmp_path / "pki")
    cert = pki.issue("switchboard")
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[tls]\ncertificate = "{cert.certificate}"\n'
                      f'private_key = "{cert.private_key}"\n'
                      "[websocket]\nping_interval = 5\n")
    ws_port, wss_port = free_port("tcp"), free_port("tcp")
    server = switchboard_server("--config", str(config), "--listen", f"ws:{HOST}:{ws_port}",
                                "--listen", f"wss:{HOST}:{wss_port}",
                                "--event-datagram", events.socket, tcp=False)
    return WsSwitchboard(server, ws_port, wss_port, pki)


@pytest.fixture
def phone(ws_switchboard: WsSwitchboard, tmp_path: Path) -> Iterator[Callable[..., JsSipPhone]]:
    """`phone(user, transport)`: a registered JsSIP phone for sip:USER@127.0.0.1."""
    why = jssip.missing()
    if why is not None:
        pytest.fail(why, pytrace=False)  # never a silent skip: scripts/test installs them
    phones: list[JsSipPhone] = []

    def start(user: str, transport: str) -> JsSipPhone:
        p = JsSipPhone(ws_switchboard.url(transport), f"sip:{user}@{HOST}", log_dir=tmp_path,
                       name=f"jssip-{user}", ca_file=ws_switchboard.pki.ca_file)
        phones.append(p)
        registered = p.wait_event("registered")
        assert ".invalid;transport=ws" in registered["contact"], registered
        return p

    yield start
    for p in phones:
        p.stop()
        print(p.describe())


@pytest.mark.sipp
@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_sipp_calls_a_registered_jssip_phone(sipp: StartSipp, ws_switchboard: WsSwitchboard,
                                             phone: Callable[..., JsSipPhone],
                                             transport: str) -> None:
    """A UDP caller reaches the phone at its address of record: the INVITE, the ACK and the
    BYE all go over the phone's WebSocket, with our WS/WSS Via on top."""
    alice = phone("alice", transport)
    server = ws_switchboard.server
    uac = sipp("uac", "uac.xml", local_port=free_port("udp"), remote=f"{HOST}:{server.udp_port}",
               service="alice", keys={"uas_port": server.udp_port}, calls=1)
    incoming = alice.wait_event("incoming")
    assert incoming["via"].startswith(f"SIP/2.0/{transport.upper()} {HOST}:"), incoming
    alice.wait_event("confirmed")
    ended = alice.wait_event("ended")
    assert ended["originator"] == "remote", ended
    assert_clean(uac.wait())


def registered_contacts(server: SwitchboardServer) -> int:
    stats = server.mi_result("statistics:get", statistics=["usrloc:"])
    return int(stats["usrloc:registered_contacts"])


@pytest.mark.sipp
def test_a_jssip_phone_whose_connection_closed_gets_its_caller_a_480(
        sipp: StartSipp, ws_switchboard: WsSwitchboard, phone: Callable[..., JsSipPhone]) -> None:
    """The phone dies without unregistering: no connection reaches its `.invalid` Contact
    any more, so its binding goes with the connection (RFC 5626 §5.3, RFC 7118 §6) and the
    MI no longer counts it. The INVITE is answered 480 at once by the location lookup (Alice
    is offline, not unknown), well inside SIPp's receive timeout, instead of timer B's 408."""
    alice = phone("alice", "ws")
    server = ws_switchboard.server
    assert registered_contacts(server) == 1
    alice.proc.kill()
    alice.proc.wait(5)
    deadline = time.monotonic() + 5  # the server reads the connection's end
    while registered_contacts(server) != 0:
        assert time.monotonic() < deadline, "the binding outlived its connection"
        time.sleep(0.05)
    uac = sipp("uac", "uac_unavailable.xml", local_port=free_port("udp"),
               remote=f"{HOST}:{server.udp_port}", service="alice",
               keys={"uas_port": server.udp_port}, calls=1)
    result = uac.wait()
    assert_clean(result)
    finals = [m.status for m in sip_messages(result)
              if m.direction == "received" and (m.status or 0) >= 200]
    assert finals == [480], finals
    assert server.proc.poll() is None


@pytest.mark.sipp
@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_a_jssip_phone_calls_sipp_and_hangs_up(sipp: StartSipp, ws_switchboard: WsSwitchboard,
                                               phone: Callable[..., JsSipPhone],
                                               transport: str) -> None:
    alice = phone("alice", transport)
    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port, calls=1).wait_listening()
    alice.command(f"call sip:uas@{HOST}:{uas_port}")
    alice.wait_event("confirmed")
    alice.command("hangup")
    alice.wait_event("ended")
    result = uas.wait()
    assert_clean(result)
    invite = received(result, "INVITE")[0]
    routes = invite.headers("record-route")
    # RFC 5658: the call crosses from WebSocket to UDP, so both sides get their own entry.
    assert len(routes) == 2 and f";transport={transport}" in routes[1], routes


@pytest.mark.sipp
@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_a_jssip_caller_blind_transferred_from_the_mi(
        sipp: StartSipp, ws_switchboard: WsSwitchboard, phone: Callable[..., JsSipPhone],
        events: EventCollector, transport: str) -> None:
    """alice (JsSIP) calls bob (SIPp); the MI transfers alice to carol (SIPp). The REFER
    reaches alice over her connection, JsSIP accepts it and its new INVITE reaches carol;
    the proxy ends the old call both ways and the events tell each step."""
    alice = phone("alice", transport)
    server = ws_switchboard.server
    bob_port, carol_port = free_port("udp"), free_port("udp")
    bob = sipp("bob", "uas.xml", local_port=bob_port, calls=1).wait_listening()
    carol = sipp("carol", "uas.xml", local_port=carol_port, calls=1).wait_listening()
    alice.command(f"call sip:bob@{HOST}:{bob_port}")
    old = alice.wait_event("confirmed")["call_id"]
    dialog_id = wait_confirmed(server, old)["ID"]
    destination = f"sip:carol@{HOST}:{carol_port}"
    assert server.mi_result("callops:transfer", callid=old, leg="caller",
                            destination=destination) == "Accepted"
    refer = alice.wait_event("refer")
    assert refer["target"] == f"{destination};osid={dialog_id}", refer
    assert refer["via"].startswith(f"SIP/2.0/{transport.upper()} {HOST}:"), refer
    new = alice.wait_event("transferring")["call_id"]
    assert new and new != old
    assert alice.wait_event("confirmed")["call_id"] == new
    # The old call ends toward both parties: bob's scenario ends with the proxy's BYE.
    assert_clean(bob.wait())
    events.wait_for("E_CALL_TRANSFER", lambda p: p["callid"] == old and p["state"] == "notify"
                    and p["status"] == "200 OK")
    steps = events.sequence("E_CALL_TRANSFER", old, "transfer_callid", "state", "status")
    # JsSIP's NOTIFY of the 180 may pass the 200 on its way: the NOTIFYs of the new call are
    # compared apart, the last one being its 200.
    assert [s for s in steps if s[:2] != (new, "notify")] == [
        ("", "start", ""), ("", "notify", "100 Trying"), (new, "start", ""),
        (new, "ok", "200 OK")], events.describe("E_CALL_TRANSFER")
    assert steps[-1] == (new, "notify", "200 OK"), events.describe("E_CALL_TRANSFER")
    wait_confirmed(server, new)
    alice.command("hangup")
    result = carol.wait()
    assert_clean(result)
    invite = received(result, "INVITE")[0]
    assert invite.ruri == destination, invite.text
    assert invite.header("Call-ID") == new


def ws_to_wss_call(server: SwitchboardServer, phone: Callable[..., JsSipPhone]
                   ) -> tuple[JsSipPhone, JsSipPhone, str]:
    """alice on ws: calls bob on wss:; returns both phones and the Call-ID once both sides
    and switchboard's dialog are confirmed."""
    alice = phone("alice", "ws")
    bob = phone("bob", "wss")
    alice.command(f"call sip:bob@{HOST}")
    callid = bob.wait_event("incoming")["call_id"]
    alice.wait_event("confirmed")
    bob.wait_event("confirmed")
    wait_confirmed(server, callid)
    return alice, bob, callid


def test_two_jssip_phones_held_unheld_and_ended_from_the_mi(
        ws_switchboard: WsSwitchboard, phone: Callable[..., JsSipPhone]) -> None:
    """alice on ws: calls bob on wss:; callops:hold and callops:unhold reach both over their
    connections, and dialog:end_dlg sends each a BYE."""
    server = ws_switchboard.server
    alice, bob, callid = ws_to_wss_call(server, phone)
    for action in ("hold", "unhold"):
        assert server.mi_result(f"callops:{action}", callid=callid) == "OK"
        for p in (alice, bob):
            assert p.wait_event(action)["originator"] == "remote"
            # The proxy ACKs each answer: the leg's state is settled before the next step.
            assert callid in p.wait_received("ACK ")
    assert "error" not in server.mi("dialog:end_dlg", dialog_id=callid)
    assert alice.wait_event("ended")["originator"] == "remote"
    assert bob.wait_event("ended")["originator"] == "remote"


async def _bad_clients(board: WsSwitchboard) -> dict[str, object]:
    """Garbage at the wss: port, a handshake without `sip`, an oversize frame and a frame
    that is not SIP at the ws: port; and a new WSS handshake's certificate subject."""
    seen: dict[str, object] = {}
    reader, writer = await asyncio.open_connection(HOST, board.ports["wss"])
    writer.write(b"\x16\x03\x01\x00\x10not a client hello at all")
    seen["garbage closed"] = await asyncio.wait_for(reader.read(100), 10) == b""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(board.url("ws"))
        except aiohttp.WSServerHandshakeError as exc:
            seen["no sip"] = exc.status
        big = await session.ws_connect(board.url("ws"), protocols=("sip",))
        await big.send_str("x" * 70000)
        await big.receive(timeout=5)
        seen["oversize"] = big.close_code
        junk = await session.ws_connect(board.url("ws"), protocols=("sip",))
        await junk.send_bytes(b"\xff\xfe not SIP")
        await junk.close()
    ctx = ssl.create_default_context(cafile=str(board.pki.ca_file))
    _, writer = await asyncio.open_connection(HOST, board.ports["wss"], ssl=ctx,
                                              server_hostname="localhost")
    seen["subject"] = writer.get_extra_info("peercert")["subject"]
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return seen


def test_bad_input_and_a_certificate_reload_leave_a_call_undisturbed(
        ws_switchboard: WsSwitchboard, phone: Callable[..., JsSipPhone]) -> None:
    server = ws_switchboard.server
    alice, bob, callid = ws_to_wss_call(server, phone)
    # SIGHUP with a new certificate in the files: new handshakes get it, nothing closes.
    ws_switchboard.pki.issue("switchboard", common_name="reloaded")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_output("TLS certificates reloaded")
    seen = asyncio.run(_bad_clients(ws_switchboard))
    assert seen["garbage closed"] is True, seen
    assert seen["no sip"] == 400, seen
    assert seen["oversize"] == 1009, seen
    assert (("commonName", "reloaded"),) in seen["subject"], seen  # type: ignore[operator]
    # The call in flight never noticed: both legs still reached over their connections.
    assert server.mi_result("callops:hold", callid=callid) == "OK"
    for p in (alice, bob):
        assert p.wait_event("hold")["originator"] == "remote"
        assert callid in p.wait_received("ACK ")
    assert "error" not in server.mi("dialog:end_dlg", dialog_id=callid)
    assert alice.wait_event("ended")["originator"] == "remote"
    assert bob.wait_event("ended")["originator"] == "remote"
    assert server.proc.poll() is None
