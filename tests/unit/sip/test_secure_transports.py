"""The core over TLS and WebSocket: a `sips:` request never goes on over a hop without TLS
(480 with Warning 380, RFC 5630), its Record-Route entries are `sips:` on every secure side
(RFC 5658 doubling included), in-dialog requests (relayed and our own) go back over the
connection a party last sent over, a request the transport cannot deliver fails at once
(RFC 3261 §17.1.4) and a WebSocket frame needs no Content-Length (RFC 7118 §5.1)."""

from __future__ import annotations

import pytest

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.dialog import DialogState
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    BOB_CONTACT,
    PROXY_TCP,
    PROXY_UDP,
    ROUTE_SECRET,
    SDP,
    Net,
    counter,
    finish,
    invite,
    one_response,
    parsed,
    reply,
    sip_request,
)

PROXY_TLS = Address("tls", "127.0.0.1", 5071)
PROXY_WS = Address("ws", "127.0.0.1", 8080)
PROXY_WSS = Address("wss", "127.0.0.1", 8443)
ALICE_WSS = Address("wss", "127.0.0.1", 41001)  # a browser's connection to our wss listener
BOB_TLS_CONN = Address("tls", "127.0.0.1", 42002)  # a phone's connection to our tls listener


def every_transport() -> Net:
    net = Net()
    net.proxy = Proxy(ProxyConfig(
        listeners=(PROXY_UDP, PROXY_TCP, PROXY_TLS, PROXY_WS, PROXY_WSS),
        route_secret=ROUTE_SECRET), counter())
    return net


# -- sips: only over TLS --------------------------------------------------------------------


def test_a_sips_request_toward_a_plain_udp_hop_is_refused_480_with_warning_380() -> None:
    net = every_transport()
    data = invite(ruri="sips:bob@127.0.0.1:5063",
                  routes=["<sip:127.0.0.1:5080;lr>"])  # a next hop over UDP
    out = parsed(net.send(data, ALICE))
    assert [(dest, m.status) for dest, m in out if isinstance(m, Response)] == [
        (ALICE, 100), (ALICE, 480)]
    refusal = out[1][1]
    assert isinstance(refusal, Response)
    assert refusal.get("warning") == '380 127.0.0.1:5060 "SIPS Not Allowed"'
    dialog = net.proxy.dialogs.by_call_id("call-1@alice")
    assert dialog is not None and dialog.state is DialogState.DELETED


def test_a_sips_request_for_a_user_registered_without_sips_is_refused_480() -> None:
    """RFC 5630 §5.3: a `sips:` AOR is retargeted only to a `sips:` contact."""
    net = every_transport()
    reg = sip_request("REGISTER", "sip:127.0.0.1", branch="z9hG4bKreg", from_uri=
                      "sip:bob@127.0.0.1", to_uri="sip:bob@127.0.0.1", from_tag="reg",
                      contact=BOB_CONTACT, call_id="reg-1",
                      via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKreg")
    assert one_response(net.send(reg, BOB), BOB).status == 200
    out = parsed(net.send(invite(ruri="sips:bob@127.0.0.1"), ALICE))
    assert [(dest, m.status) for dest, m in out if isinstance(m, Response)] == [
        (ALICE, 100), (ALICE, 480)]
    assert out[1][1].get("warning") == '380 127.0.0.1:5060 "SIPS Not Allowed"'


def test_a_sips_request_from_wss_to_tls_records_two_sips_routes() -> None:
    net = every_transport()
    data = invite(ruri="sips:bob@127.0.0.1:5063",
                  via="SIP/2.0/WSS df7.invalid;branch=z9hG4bKa-inv",
                  contact="sips:alice@df7.invalid;transport=ws")
    out = parsed(net.send(data, ALICE_WSS, PROXY_WSS))
    assert [dest for dest, _ in out] == [ALICE_WSS, Address("tls", "127.0.0.1", 5063)]
    fwd = out[1][1]
    assert isinstance(fwd, Request)
    assert fwd.get_all("record-route") == [
        "<sips:127.0.0.1:5071;lr>", "<sips:127.0.0.1:8443;transport=ws;lr>"]
    assert fwd.top_via.transport == "TLS"


@pytest.mark.parametrize(("ruri", "record_route"), [
    # A sips: request toward TLS: the caller's side is plain UDP (its own mistake), so that
    # entry stays `sip:`; the one the callee sees is `sips:`.
    ("sips:bob@127.0.0.1:5063", ["<sips:127.0.0.1:5071;lr>", "<sip:127.0.0.1:5060;lr>"]),
    # A plain sip: request keeps plain routes on TLS.
    ("sip:bob@127.0.0.1:5063;transport=tls",
     ["<sip:127.0.0.1:5071;transport=tls;lr>", "<sip:127.0.0.1:5060;lr>"]),
], ids=["sips-request-beside-plain-udp", "plain-request-over-tls"])
def test_a_route_entry_toward_tls_is_sips_only_for_a_sips_request(
        ruri: str, record_route: list[str]) -> None:
    net = every_transport()
    out = parsed(net.send(invite(ruri=ruri), ALICE))
    fwd = out[1][1]
    assert isinstance(fwd, Request)
    assert fwd.get_all("record-route") == record_route


# -- in-dialog requests over the known connection ---------------------------------------------

# Bob calls over TLS from an ephemeral port; his Contact names another port than his Via
# (what the transport would alias the connection under), so only the connection reaches him.
BOB_TLS_CONTACT = "sip:bob@127.0.0.1:5099;transport=tls"


def bob_calls_alice_over_tls(net: Net) -> Request:
    data = invite(ruri="sip:alice@127.0.0.1:5061", from_tag="bob-tag", from_uri=
                  "sip:bob@127.0.0.1", to_uri="sip:alice@127.0.0.1", call_id="call-tls",
                  via="SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKb-inv",
                  contact=BOB_TLS_CONTACT)
    out = parsed(net.send(data, BOB_TLS_CONN, PROXY_TLS))
    assert [dest for dest, _ in out] == [BOB_TLS_CONN, ALICE]
    at_alice = out[1][1]
    assert isinstance(at_alice, Request)
    ok = reply(at_alice, 200, to_tag="alice-tag", contact="sip:alice@127.0.0.1:5061", body=SDP)
    assert one_response(net.send(ok, ALICE), BOB_TLS_CONN).status == 200
    return at_alice


def test_an_in_dialog_request_goes_over_the_connection_its_party_sent_over() -> None:
    net = every_transport()
    at_alice = bob_calls_alice_over_tls(net)
    routes = at_alice.get_all("record-route")
    assert routes == ["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5071;transport=tls;lr>"]
    # Alice hangs up: her BYE goes to Bob's Contact along her route set, over Bob's TLS
    # connection (not to port 5099, where nobody listens for us).
    bye = sip_request("BYE", BOB_TLS_CONTACT, branch="z9hG4bKa-bye", from_tag="alice-tag",
                      from_uri="sip:alice@127.0.0.1", to_uri="sip:bob@127.0.0.1",
                      to_tag="bob-tag", call_id="call-tls", cseq=1, routes=routes,
                      contact=None)
    out = net.send(bye, ALICE)
    assert [(d.dest, d.local) for d in out] == [(BOB_TLS_CONN, PROXY_TLS)]
    assert out[0].data.startswith(f"BYE {BOB_TLS_CONTACT} SIP/2.0".encode())


def test_the_proxys_own_bye_goes_over_the_connection_too() -> None:
    net = every_transport()
    bob_calls_alice_over_tls(net)
    ack = sip_request("ACK", "sip:alice@127.0.0.1:5061", branch="z9hG4bKb-ack",
                      from_tag="bob-tag", from_uri="sip:bob@127.0.0.1",
                      to_uri="sip:alice@127.0.0.1", to_tag="alice-tag", call_id="call-tls",
                      via="SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKb-ack",
                      routes=["<sip:127.0.0.1:5071;transport=tls;lr>",
                              "<sip:127.0.0.1:5060;lr>"], contact=None)
    assert [d.dest for d in net.send(ack, BOB_TLS_CONN, PROXY_TLS)] == [ALICE]
    dialog = net.proxy.dialogs.by_call_id("call-tls")
    assert dialog is not None
    assert net.proxy.end_dialog(dialog.id, net.now)
    assert sorted((d.dest, d.data.split(b" ", 1)[0]) for d in net.take()) == sorted(
        [(BOB_TLS_CONN, b"BYE"), (ALICE, b"BYE")])


# -- a request nobody can carry fails at once ---------------------------------------------------

WS_CONTACT = "sip:carol@k2h3.invalid;transport=ws"


def test_an_undeliverable_invite_is_answered_480_at_once() -> None:
    net = every_transport()
    out = net.send(invite(ruri=WS_CONTACT), ALICE)
    assert [d.dest for d in out] == [ALICE, Address("ws", "k2h3.invalid", 80)]
    # The driver found no connection to the client any more.
    net.proxy.undeliverable(out[1], net.now)
    ((dest, answer),) = parsed(net.take())
    assert dest == ALICE and isinstance(answer, Response) and answer.status == 480
    dialog = net.proxy.dialogs.by_call_id("call-1@alice")
    assert dialog is not None and dialog.state is DialogState.DELETED
    assert net.proxy.client_txns == {}
    assert net.stats()["core:undeliverable_requests"] == 1
    # Nothing times out later: only the 480 is retransmitted to Alice until she ACKs it.
    later = parsed(net.run_all_timers())
    assert later and {(dest, m.status) for dest, m in later if isinstance(m, Response)} == {
        (ALICE, 480)}
    assert len(later) == len([m for _, m in later if isinstance(m, Response)])


def test_an_undeliverable_request_of_our_own_is_reported_480() -> None:
    net = every_transport()
    at_alice = parsed(net.send(invite(ruri=WS_CONTACT), ALICE))[1][1]
    assert isinstance(at_alice, Request)
    ok = reply(at_alice, 200, to_tag="carol-tag", contact=WS_CONTACT, body=SDP)
    net.send(ok, Address("ws", "k2h3.invalid", 80), PROXY_WS)
    dialog = net.proxy.dialogs.by_call_id("call-1@alice")
    assert dialog is not None
    finals: list[tuple[int, str]] = []
    assert net.proxy.send_in_dialog(dialog, dialog.callee, dialog.caller, "INFO", [], b"",
                                    lambda status, reason, now: finals.append((status, reason)),
                                    net.now)
    (info,) = net.take()
    net.proxy.undeliverable(info, net.now)
    assert finals == [(480, "Temporarily Unavailable")]
    assert net.take() == []


def test_an_undeliverable_response_or_ack_changes_nothing() -> None:
    net = every_transport()
    out = net.send(invite(ruri=WS_CONTACT), ALICE)
    net.proxy.undeliverable(out[0], net.now)  # the 100 Trying
    assert net.take() == []
    assert len(net.proxy.client_txns) == 1


# -- a WebSocket frame is one whole message ------------------------------------------------------


def message_without_content_length() -> bytes:
    data = finish(["MESSAGE sip:bob@127.0.0.1:5062 SIP/2.0",
                   "Via: SIP/2.0/WS df7.invalid;branch=z9hG4bKmsg", "Max-Forwards: 70",
                   "From: <sip:alice@127.0.0.1>;tag=a", "To: <sip:bob@127.0.0.1>",
                   "Call-ID: msg-1", "CSeq: 1 MESSAGE"], [], b"hello", "text/plain")
    return data.replace(b"Content-Length: 5\r\n", b"")


def test_a_websocket_frame_needs_no_content_length() -> None:
    net = every_transport()
    data = message_without_content_length()
    assert b"Content-Length" not in data
    out = parsed(net.send(data, Address("ws", "127.0.0.1", 41002), PROXY_WS))
    assert [dest for dest, _ in out] == [BOB]
    fwd = out[0][1]
    assert isinstance(fwd, Request) and fwd.body == b"hello"


def test_a_tcp_stream_still_needs_one() -> None:
    net = every_transport()
    conn = Address("tcp", "127.0.0.1", 41003)
    answer = one_response(net.send(message_without_content_length(), conn, PROXY_TCP), conn)
    assert answer.status == 400
    assert parse_message(answer.to_bytes()).call_id == "msg-1"
