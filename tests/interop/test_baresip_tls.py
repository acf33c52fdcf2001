"""A three-party blind transfer over TLS with user agents we did not write: alice, bob and
carol are baresip (baresip-python's bundled stack) registered with `switchboard serve` over
TLS, each verifying switchboard's certificate against the test CA (baresip's `sip_cafile`,
`sip_verify_server`; a peer given another CA cannot register). alice calls bob; the MI
transfers bob to carol. Every request the proxy sends a party (the INVITE to bob, the REFER,
the BYEs, carol's INVITE) comes over the TLS connection that party opened when it registered
(its source is the proxy's listening port, not a port of a connection the proxy opened).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop.baresip import BaresipPeer, PeerFactory, transfer_call_established
from tests.interop.sip_trace import trace
from tests.support.certs import TestPki, make_pki
from tests.support.events import EventCollector
from tests.support.ports import HOST, free_port
from tests.support.server import CONFIRMED, SwitchboardServer, wait_dialogs

pytestmark = [pytest.mark.baresip, pytest.mark.interop]

CAROL = "sip:carol@127.0.0.1"


def _tls_switchboard(start: Callable[..., SwitchboardServer], tmp_path: Path,
                     events: EventCollector) -> tuple[SwitchboardServer, int, TestPki]:
    pki = make_pki(tmp_path / "pki")
    cert = pki.issue("switchboard")
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[tls]\ncertificate = "{cert.certificate}"\n'
                      f'private_key = "{cert.private_key}"\nca_file = "{pki.ca_file}"\n')
    tls_port = free_port("tcp")
    server = start("--config", str(config), "--listen", f"tls:{HOST}:{tls_port}",
                   "--event-datagram", events.socket, tcp=False)
    return server, tls_port, pki


def _confirmed(sb: SwitchboardServer, call_id: str) -> dict[str, Any]:
    found = wait_dialogs(
        sb, lambda ds: [d["callid"] for d in ds] == [call_id] and ds[0]["state"] == CONFIRMED,
        f"only {call_id} confirmed")
    return found[0]


def _eventually(check: Callable[[], None], timeout: float = 3.0) -> None:
    """`check()` once it stops raising AssertionError: a peer's SIP trace reaches us through
    its stderr pipe, which can lag behind the events we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _over_tls(p: BaresipPeer, call_id: str, tls_port: int) -> None:
    """Every message `p` exchanged in `call_id` went to or came from the proxy's TLS port."""
    messages = trace(p, call_id)
    assert messages, f"{p.user}: no SIP traffic traced in {call_id}"
    for m in messages:
        assert m.transport == "TLS" and m.remote == f"{HOST}:{tls_port}", (
            p.user, str(m), m.transport, m.remote)
    for m in messages:
        if m.direction == "RX" and m.method is not None:
            assert m.header("via")[0].upper().startswith("SIP/2.0/TLS "), str(m)


def test_blind_transfer_over_tls_from_mi(
    switchboard_server: Callable[..., SwitchboardServer], peer: PeerFactory,
    events: EventCollector, tmp_path: Path,
) -> None:
    sb, tls_port, pki = _tls_switchboard(switchboard_server, tmp_path, events)
    registrar = f"sip:{HOST}:{tls_port};transport=tls"
    tls: dict[str, Any] = {"registrar": registrar, "transport": "tls",
                           "ca_file": pki.ca_file, "sip_trace": True}
    carol = peer("carol", auto_answer=True, **tls)
    bob = peer("bob", auto_answer=True, transfer_policy="auto", **tls)
    alice = peer("alice", **tls)
    for p in (carol, bob, alice):
        assert p.ready is not None and p.ready["registered"] is True, p.describe()

    dialed = alice.dial(f"sip:bob@{HOST}")
    old = dialed["call_id"]
    incoming = bob.wait_event("incoming", call_id=old)
    alice.wait_event("established", call=dialed["call"])
    bob.wait_event("established", call=incoming["call"])
    dialog = _confirmed(sb, old)

    assert sb.mi_result("callops:transfer", callid=old, leg="callee",
                        destination=CAROL) == "Accepted"
    request = bob.wait_event("transfer_request", call=incoming["call"])
    assert request["target"] == f"{CAROL};osid={dialog['ID']}", request
    new_call, carol_in = transfer_call_established(bob, carol)
    new = new_call["call_id"]
    assert new and new != old
    # The proxy, as the transferor, ends the old call toward both parties.
    alice.wait_event("closed", call=dialed["call"])
    bob.wait_event("closed", call=incoming["call"])
    events.wait_for(
        "E_CALL_TRANSFER",
        lambda p: p["callid"] == old and p["state"] == "notify" and p["status"] == "200 OK")
    _confirmed(sb, new)

    # On the wire: the REFER and the BYEs came from the proxy, over TLS.
    def received(p: BaresipPeer, call_id: str, method: str) -> int:
        return sum(1 for m in trace(p, call_id) if m.direction == "RX" and m.method == method)

    def wire() -> None:
        assert received(bob, old, "REFER") == 1
        assert received(alice, old, "BYE") == received(bob, old, "BYE") == 1
        assert received(carol, new, "INVITE") == 1
        for p, call_id in ((alice, old), (bob, old), (bob, new), (carol, new)):
            _over_tls(p, call_id, tls_port)

    _eventually(wire)

    bob.hangup(call=new_call["call"])
    carol.wait_event("closed", call=carol_in["call"])
    wait_dialogs(sb, lambda ds: ds == [], "empty")


def test_a_peer_that_does_not_trust_the_certificate_cannot_register(
    switchboard_server: Callable[..., SwitchboardServer], peer: PeerFactory,
    events: EventCollector, tmp_path: Path,
) -> None:
    """The other side of the test above: baresip does verify switchboard's certificate."""
    sb, tls_port, _ = _tls_switchboard(switchboard_server, tmp_path, events)
    stranger = make_pki(tmp_path / "other-ca")
    mallory = peer("mallory", registrar=f"sip:{HOST}:{tls_port};transport=tls",
                   transport="tls", ca_file=stranger.ca_file,
                   extra_args=("--register-timeout", "5"))
    assert mallory.ready is not None and mallory.ready["registered"] is False, mallory.describe()
    mallory.wait_event("register_failed")
    stats = sb.mi_result("statistics:get", statistics=["usrloc:"])
    assert stats["usrloc:registered_contacts"] == 0, stats
