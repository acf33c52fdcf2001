"""Self-test of the baresip harness, with no proxy in the path.

Real baresip user agents, one process each, call each other directly over 127.0.0.1.
If these fail, the proxy interop tests built on ``tests/interop/baresip.py`` cannot be
trusted either. The last test puts a scripted UDP stub in the registrar/outbound-proxy
role to pin down what baresip sends to a proxy (Route, Request-URI, Contact).
"""

from __future__ import annotations

import re

import pytest

from tests.interop.baresip import PeerFactory
from tests.support.ports import free_port
from tests.support.udp import DatagramReader

pytestmark = [pytest.mark.baresip, pytest.mark.interop]


def test_direct_call_answer_and_hangup(peer: PeerFactory) -> None:
    bob = peer("bob")
    alice = peer("alice")

    dialed = alice.dial(bob.contact_uri)
    incoming = bob.wait_event("incoming")
    assert incoming["from"].startswith("sip:alice@127.0.0.1")
    assert incoming["call_id"] == dialed["call_id"]
    alice.wait_event("ringing", call=dialed["call"])

    bob.answer()
    a_est = alice.wait_event("established", call=dialed["call"])
    b_est = bob.wait_event("established", call=incoming["call"])
    assert a_est["call_id"] == b_est["call_id"] == dialed["call_id"]

    (a_call,) = alice.state()["calls"]
    assert a_call["state"] == "established"
    assert a_call["direction"] == "outgoing"
    (b_call,) = bob.state()["calls"]
    assert b_call["state"] == "established"
    assert b_call["direction"] == "incoming"

    alice.hangup()
    alice.wait_event("closed", call=dialed["call"])
    b_closed = bob.wait_event("closed", call=incoming["call"])
    assert b_closed["call_id"] == dialed["call_id"]
    assert [c["state"] for c in bob.state()["calls"]] == ["closed"]

    assert alice.stop() == 0
    assert bob.stop() == 0
    alice.wait_event("exit")


def test_hold_and_resume_seen_as_remote_hold(peer: PeerFactory) -> None:
    bob = peer("bob", auto_answer=True)
    alice = peer("alice")

    alice.dial(bob.contact_uri)
    alice.wait_event("established")
    bob.wait_event("established")

    alice.hold()  # replies once the re-INVITE is answered
    assert bob.wait_event("remote_hold")["on"] is True
    (b_call,) = bob.state()["calls"]
    assert b_call["remote_hold"] is True
    (a_call,) = alice.state()["calls"]
    assert a_call["on_hold"] is True
    assert a_call["remote_hold"] is False

    alice.resume()  # right after the hold: the peer retries if a re-INVITE is in flight
    assert bob.wait_event("remote_hold")["on"] is False
    (b_call,) = bob.state()["calls"]
    assert b_call["remote_hold"] is False
    assert alice.state()["calls"][0]["on_hold"] is False

    bob.hangup()
    alice.wait_event("closed")
    bob.wait_event("closed")


def test_blind_transfer(peer: PeerFactory) -> None:
    carol = peer("carol", auto_answer=True)
    bob = peer("bob", auto_answer=True)
    alice = peer("alice", transfer_policy="auto")

    first = alice.dial(bob.contact_uri)
    alice.wait_event("established", call=first["call"])
    bob.wait_event("established")

    bob.transfer(carol.contact_uri)  # returns on the NOTIFY carrying 200
    request = alice.wait_event("transfer_request", call=first["call"])
    assert request["target"] == carol.contact_uri
    assert request["replaces"] is False
    new = alice.wait_event("transfer_call")
    alice.wait_event("established", call=new["call"])
    carol.wait_event("established")
    assert bob.wait_event("closed")["reason"] == "Call transfered"  # sic, baresip's text
    alice.wait_event("closed", call=first["call"])  # bob's BYE ends the old dialog

    alice.hangup(call=new["call"])
    carol.wait_event("closed")


def test_attended_transfer(peer: PeerFactory) -> None:
    carol = peer("carol", auto_answer=True)
    bob = peer("bob", auto_answer=True)
    alice = peer("alice", transfer_policy="auto")

    alice.dial(bob.contact_uri)
    alice.wait_event("established")
    first = bob.wait_event("established")
    bob.hold(call=first["call"])
    consult = bob.dial(carol.contact_uri)
    bob.wait_event("established", call=consult["call"])
    carol_consult = carol.wait_event("established")

    reply = bob.attended_transfer()
    assert reply["call"] == first["call"]
    assert reply["consult"] == consult["call"]

    request = alice.wait_event("transfer_request")
    assert request["replaces"] is True
    assert request["target"].startswith(carol.contact_uri)
    # carol's consultation leg is replaced by alice's new INVITE (Replaces).
    carol.wait_event("closed", call=carol_consult["call"])
    carol_new = carol.wait_event("established")
    assert carol_new["peer"].startswith("sip:alice@")
    new = alice.wait_event("transfer_call")
    alice.wait_event("established", call=new["call"])
    bob.wait_event("closed", call=first["call"])
    bob.wait_event("closed", call=consult["call"])

    carol.hangup()
    alice.wait_event("closed", call=new["call"])


class _StubProxy(DatagramReader):
    """Just enough of a registrar/proxy on UDP: 200 to REGISTER, 404 to INVITE.

    Records every request so the test can assert on what baresip sends a proxy.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(name="stub-proxy")

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        text = data.decode("utf-8", "replace")
        method = text.split(" ", 1)[0]
        if method == "SIP/2.0":
            return
        self.requests.append(text)
        if method == "ACK":
            return
        lines = text.split("\r\n")
        keep = [line for line in lines if re.match(r"(?i)(via|from|to|call-id|cseq):", line)]
        if method == "REGISTER":
            status = "200 OK"
            keep += [line for line in lines if line.lower().startswith("contact:")]
        else:
            status = "404 Not Found"
        keep = [f"{h};tag=stub" if h.lower().startswith("to:") else h for h in keep]
        resp = f"SIP/2.0 {status}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        self.sock.sendto(resp.encode(), source)

    def first(self, method: str) -> str:
        return next(r for r in self.requests if r.startswith(method + " "))


def _header(msg: str, name: str) -> str:
    for line in msg.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header in:\n{msg}")


def test_registrar_and_outbound_proxy_config(peer: PeerFactory) -> None:
    stub = _StubProxy()
    try:
        proxy_uri = f"sip:127.0.0.1:{stub.port}"
        alice = peer("alice", registrar=proxy_uri, sip_port=free_port("both"))
        assert alice.ready is not None and alice.ready["registered"] is True
        alice.wait_event("registered")
        assert alice.aor == "sip:alice@127.0.0.1"

        register = stub.first("REGISTER")
        assert register.startswith("REGISTER sip:127.0.0.1;transport=udp SIP/2.0\r\n")
        assert _header(register, "Route") == f"<{proxy_uri};lr>"
        assert _header(register, "To") == "<sip:alice@127.0.0.1>"
        assert _header(register, "Contact").startswith(f"<{alice.contact_uri}>")

        dialed = alice.dial("sip:bob@127.0.0.1")
        closed = alice.wait_event("closed", call=dialed["call"])
        assert closed["reason"] == "404 Not Found"
        invite = stub.first("INVITE")
        assert invite.startswith("INVITE sip:bob@127.0.0.1;transport=udp SIP/2.0\r\n")
        assert _header(invite, "Route") == f"<{proxy_uri};lr>"
        assert _header(invite, "Call-ID") == dialed["call_id"]

        assert alice.stop() == 0
        alice.wait_event("unregistered")  # quit unregisters: REGISTER with expires=0
        last_register = [r for r in stub.requests if r.startswith("REGISTER ")][-1]
        assert _header(last_register, "Contact").endswith(";expires=0")
    finally:
        stub.close()
