"""The four RFC 3261 §17 transaction machines (with RFC 6026 Accepted), sans-IO.

Each test builds one machine over a `TimerQueue`, feeds it messages and a fake `now`, and
asserts on the datagrams it hands to `send` and on what it reports to its user. Timer values
are the RFC defaults (T1 = 0.5 s, T2 = 4 s, T4 = 5 s); nothing sleeps.
"""

from __future__ import annotations

import pytest

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.timers import TimerQueue
from switchboard.sip.transaction import (
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    State,
    TimerSettings,
    response_address,
    server_key,
)
from switchboard.sip.wire import Address, Datagram

LOCAL_UDP = Address("udp", "127.0.0.1", 5060)
LOCAL_TCP = Address("tcp", "127.0.0.1", 5060)
PEER_UDP = Address("udp", "127.0.0.1", 5062)
PEER_TCP = Address("tcp", "127.0.0.1", 40000)
SETTINGS = TimerSettings()
T1, T2, T4 = SETTINGS.t1, SETTINGS.t2, SETTINGS.t4

BRANCH = "z9hG4bKclient1"


def _request(method: str, *, branch: str = BRANCH, cseq: int = 1, cseq_method: str | None = None,
             via: str | None = None, to_tag: str | None = None, routes: tuple[str, ...] = ()
             ) -> Request:
    via = via or f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:bob@127.0.0.1:5062 SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKupstream;received=127.0.0.1",
        *(f"Route: {r}" for r in routes),
        "Max-Forwards: 69",
        "From: Alice <sip:alice@example.com>;tag=from1",
        f"To: {to}",
        "Call-ID: call-1@example.com",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@127.0.0.1:5061>",
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def _response(request: Request, status: int, *, to_tag: str | None = "callee1") -> Response:
    """A response as the next hop writes it: Vias, From, To (+ tag), Call-ID, CSeq copied."""
    lines = [f"SIP/2.0 {status} Whatever"]
    for key, name, value in request.headers:
        if key in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(f"{name}: {value}")
        elif key == "to":
            lines.append(f"{name}: {value}" + (f";tag={to_tag}" if to_tag and status > 100 else ""))
    lines += ["Content-Length: 0", "", ""]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Response)
    return msg


def _parse(datagram: Datagram) -> Request | Response:
    return parse_message(datagram.data)


class FakeUser:
    """A TransactionUser that records what the client transaction reports."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, float]] = []
        self.timeouts: list[float] = []
        self.terminated: list[ClientTransaction] = []

    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None:
        self.responses.append((response.status, now))

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        self.timeouts.append(now)

    def on_terminated(self, txn: ClientTransaction) -> None:
        self.terminated.append(txn)


class Harness:
    """A timer queue plus the list `send` appends to, and a helper to run timers in order."""

    def __init__(self) -> None:
        self.timers = TimerQueue()
        self.sent: list[Datagram] = []

    def take(self) -> list[Datagram]:
        out, self.sent[:] = list(self.sent), []
        return out

    def run_until(self, until: float) -> list[tuple[float, Datagram]]:
        """Fire every timer due up to `until`, each at its own deadline; return what was sent."""
        out: list[tuple[float, Datagram]] = []
        while (deadline := self.timers.next_deadline()) is not None and deadline <= until:
            before = len(self.sent)
            self.timers.run_due(deadline)
            out.extend((deadline, d) for d in self.sent[before:])
        del self.sent[:]
        return out


def _client(cls: type[ClientTransaction], request: Request, dest: Address = PEER_UDP,
            local: Address = LOCAL_UDP) -> tuple[ClientTransaction, Harness, FakeUser]:
    h = Harness()
    user = FakeUser()
    txn = cls(request, dest, local, h.sent.append, h.timers, SETTINGS, user)
    return txn, h, user


def _server(cls: type[ServerTransaction], request: Request, source: Address = PEER_UDP,
            local: Address = LOCAL_UDP) -> tuple[ServerTransaction, Harness, list[object]]:
    h = Harness()
    ended: list[object] = []
    txn = cls(request, source, local, h.sent.append, h.timers, SETTINGS, ended.append)
    return txn, h, ended


# -- INVITE client (§17.1.1, RFC 6026 §7.2) ----------------------------------------------------


def test_invite_client_timer_a_doubles_until_timer_b_times_out() -> None:
    invite = _request("INVITE")
    txn, h, user = _client(InviteClientTransaction, invite)
    txn.start(0.0)
    first = h.take()
    assert [d.dest for d in first] == [PEER_UDP]
    assert first[0].local == LOCAL_UDP
    assert first[0].data == invite.to_bytes()
    assert txn.state is State.CALLING

    fired = h.run_until(100.0)
    # Timer A: T1, 2T1, 4T1 ... with no cap, until timer B (64*T1) ends the transaction.
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(d.data == invite.to_bytes() and d.dest == PEER_UDP for _, d in fired)
    assert user.timeouts == [64 * T1]
    assert txn.state is State.TERMINATED
    assert user.terminated == [txn]
    assert user.responses == []
    assert h.timers.next_deadline() is None


def test_invite_client_provisional_stops_timers_a_and_b() -> None:
    txn, h, user = _client(InviteClientTransaction, _request("INVITE"))
    txn.start(0.0)
    h.take()
    assert h.run_until(1.0) and h.timers.next_deadline() == 1.5
    txn.receive_response(_response(txn.request, 100, to_tag=None), 1.2)
    assert txn.state is State.PROCEEDING
    txn.receive_response(_response(txn.request, 180), 2.0)
    assert user.responses == [(100, 1.2), (180, 2.0)]
    # No more retransmissions and no timeout: in Proceeding the proxy's timer C governs.
    assert h.run_until(1000.0) == []
    assert user.timeouts == []
    assert txn.state is State.PROCEEDING


@pytest.mark.parametrize("first", [None, 180])
def test_invite_client_2xx_moves_to_accepted_and_reports_retransmissions(
        first: int | None) -> None:
    txn, h, user = _client(InviteClientTransaction, _request("INVITE"))
    txn.start(0.0)
    if first is not None:
        txn.receive_response(_response(txn.request, first), 0.2)
    ok = _response(txn.request, 200)
    txn.receive_response(ok, 1.0)
    assert txn.state is State.ACCEPTED
    h.take()
    # 2xx retransmissions are reported to the user, who ACKs them end to end (RFC 6026 §7.2).
    txn.receive_response(ok, 1.5)
    txn.receive_response(ok, 2.5)
    assert [s for s, _ in user.responses][-3:] == [200, 200, 200]
    assert h.take() == []  # no ACK from the transaction for a 2xx
    # A non-2xx in Accepted is not passed up.
    txn.receive_response(_response(txn.request, 486), 3.0)
    assert [s for s, _ in user.responses].count(486) == 0
    # Timer M (64*T1) ends it, with no retransmission of the INVITE in between.
    assert h.run_until(1.0 + 64 * T1 - 0.01) == []
    assert txn.state is State.ACCEPTED
    assert h.run_until(1.0 + 64 * T1) == []
    assert txn.state is State.TERMINATED
    assert user.terminated == [txn]
    assert user.timeouts == []


def test_invite_client_non_2xx_final_is_acked_hop_by_hop() -> None:
    invite = _request("INVITE", cseq=7, routes=("<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"))
    txn, h, user = _client(InviteClientTransaction, invite)
    txn.start(0.0)
    h.take()
    txn.receive_response(_response(invite, 180), 0.1)
    busy = _response(invite, 486, to_tag="busy-tag")
    txn.receive_response(busy, 0.3)
    assert txn.state is State.COMPLETED
    assert user.responses == [(180, 0.1), (486, 0.3)]
    [ack_dgram] = h.take()
    assert ack_dgram.dest == PEER_UDP and ack_dgram.local == LOCAL_UDP
    ack = _parse(ack_dgram)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    # §17.1.1.3: only the top Via of the INVITE, the same branch.
    assert [str(v) for v in ack.vias] == [str(invite.top_via)]
    assert ack.top_via.branch == BRANCH
    assert ack.to.tag == "busy-tag"
    assert ack.get("to") == busy.get("to")
    assert ack.get("from") == invite.get("from")
    assert ack.call_id == invite.call_id
    assert (ack.cseq.number, ack.cseq.method) == (7, "ACK")
    assert ack.get_all("route") == ["<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"]
    assert ack.max_forwards == 69
    assert ack.get("contact") is None

    # Each retransmission of the final response is ACKed again, not passed up.
    txn.receive_response(busy, 1.0)
    txn.receive_response(busy, 2.0)
    again = h.take()
    assert [d.data for d in again] == [ack_dgram.data, ack_dgram.data]
    assert user.responses == [(180, 0.1), (486, 0.3)]

    # Timer D (>= 32 s on UDP).
    assert h.run_until(0.3 + 31.9) == []
    assert txn.state is State.COMPLETED
    h.run_until(0.3 + 32.0)
    assert txn.state is State.TERMINATED
    assert user.terminated == [txn]


def test_invite_client_final_in_calling_is_acked_too() -> None:
    txn, h, user = _client(InviteClientTransaction, _request("INVITE"))
    txn.start(0.0)
    h.take()
    txn.receive_response(_response(txn.request, 603), 0.2)
    [ack] = [_parse(d) for d in h.take()]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert h.run_until(10.0) == []  # timer A stopped
    assert user.timeouts == []


def test_invite_client_over_tcp_has_no_retransmissions_and_no_timer_d() -> None:
    invite = _request("INVITE", via=f"SIP/2.0/TCP 127.0.0.1:5060;branch={BRANCH}")
    txn, h, user = _client(InviteClientTransaction, invite, dest=PEER_TCP, local=LOCAL_TCP)
    txn.start(0.0)
    assert len(h.take()) == 1
    # Only timer B: no retransmissions on a reliable transport (§17.1.1.2).
    assert h.run_until(64 * T1) == []
    assert user.timeouts == [64 * T1]
    assert txn.state is State.TERMINATED


def test_invite_client_tcp_non_2xx_terminates_at_once() -> None:
    invite = _request("INVITE", via=f"SIP/2.0/TCP 127.0.0.1:5060;branch={BRANCH}")
    txn, h, user = _client(InviteClientTransaction, invite, dest=PEER_TCP, local=LOCAL_TCP)
    txn.start(0.0)
    h.take()
    txn.receive_response(_response(invite, 404), 0.5)
    [ack] = h.take()
    assert ack.dest == PEER_TCP and ack.local == LOCAL_TCP
    assert user.responses == [(404, 0.5)]
    assert txn.state is State.TERMINATED  # timer D is zero on a reliable transport
    assert user.terminated == [txn]
    assert h.timers.next_deadline() is None


def test_invite_client_transport_error_is_a_timeout() -> None:
    txn, h, user = _client(InviteClientTransaction, _request("INVITE"))
    txn.start(0.0)
    txn.transport_error(0.1)
    assert user.timeouts == [0.1]
    assert txn.state is State.TERMINATED
    h.take()
    assert h.run_until(100.0) == []  # timers A and B were disarmed
    assert user.terminated == [txn]
    assert user.timeouts == [0.1]


# -- non-INVITE client (§17.1.2) ----------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    bye = _request("BYE", to_tag="callee1")
    txn, h, user = _client(NonInviteClientTransaction, bye)
    txn.start(0.0)
    assert len(h.take()) == 1
    assert txn.state is State.TRYING
    fired = h.run_until(100.0)
    # T1, 2T1, 4T1, then T2 (4 s) until timer F at 64*T1.
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(d.data == bye.to_bytes() for _, d in fired)
    assert user.timeouts == [32.0]
    assert txn.state is State.TERMINATED
    assert user.terminated == [txn]


def test_non_invite_client_retransmits_at_t2_in_proceeding() -> None:
    txn, h, user = _client(NonInviteClientTransaction, _request("OPTIONS"))
    txn.start(0.0)
    h.take()
    assert [t for t, _ in h.run_until(0.5)] == [0.5]  # next E at 1.5 (interval 2*T1)
    txn.receive_response(_response(txn.request, 100, to_tag=None), 0.6)
    assert txn.state is State.PROCEEDING
    assert user.responses == [(100, 0.6)]
    # §17.1.2.2: in Proceeding timer E is reset to T2 each time it fires.
    fired = [t for t, _ in h.run_until(14.0)]
    assert fired == [1.5, 5.5, 9.5, 13.5]
    txn.receive_response(_response(txn.request, 200), 14.0)
    assert txn.state is State.COMPLETED
    assert user.responses == [(100, 0.6), (200, 14.0)]
    assert h.run_until(40.0) == []  # E and F stopped
    assert user.timeouts == []


def test_non_invite_client_completed_absorbs_retransmissions_until_timer_k() -> None:
    txn, h, user = _client(NonInviteClientTransaction, _request("BYE", to_tag="x"))
    txn.start(0.0)
    ok = _response(txn.request, 200)
    txn.receive_response(ok, 1.0)
    txn.receive_response(ok, 2.0)
    txn.receive_response(_response(txn.request, 500), 2.5)
    assert user.responses == [(200, 1.0)]
    h.take()
    assert h.run_until(1.0 + T4 - 0.01) == []
    assert txn.state is State.COMPLETED
    h.run_until(1.0 + T4)
    assert txn.state is State.TERMINATED
    assert user.terminated == [txn]
    assert user.timeouts == []


def test_non_invite_client_over_tcp() -> None:
    bye = _request("BYE", to_tag="x", via=f"SIP/2.0/TCP 127.0.0.1:5060;branch={BRANCH}")
    txn, h, user = _client(NonInviteClientTransaction, bye, dest=PEER_TCP, local=LOCAL_TCP)
    txn.start(0.0)
    assert len(h.take()) == 1
    assert h.run_until(31.9) == []  # no timer E on a reliable transport
    txn.receive_response(_response(bye, 200), 31.9)
    assert txn.state is State.TERMINATED  # timer K is zero
    assert user.terminated == [txn]
    assert h.timers.next_deadline() is None


def test_non_invite_client_tcp_timeout() -> None:
    bye = _request("BYE", to_tag="x", via=f"SIP/2.0/TCP 127.0.0.1:5060;branch={BRANCH}")
    txn, h, user = _client(NonInviteClientTransaction, bye, dest=PEER_TCP, local=LOCAL_TCP)
    txn.start(0.0)
    h.take()
    assert h.run_until(40.0) == []
    assert user.timeouts == [32.0]


# -- INVITE server (§17.2.1, RFC 6026 §7.1) ---------------------------------------------------


def _upstream_invite(transport: str = "UDP") -> Request:
    return _request("INVITE", via=f"SIP/2.0/{transport} 127.0.0.1:5062;branch=z9hG4bKsrv1")


def _answer(request: Request, status: int, to_tag: str | None = "uas1") -> Response:
    return _response(request, status, to_tag=to_tag)


def test_invite_server_resends_last_response_to_retransmitted_invite() -> None:
    invite = _upstream_invite()
    txn, h, _ = _server(InviteServerTransaction, invite)
    assert txn.state is State.PROCEEDING
    assert txn.reply_to == PEER_UDP
    # A retransmission before any response is absorbed.
    txn.receive_request(invite, 0.1)
    assert h.take() == []
    trying = _answer(invite, 100, to_tag=None)
    txn.respond(trying, 0.0)
    [d] = h.take()
    assert d.dest == PEER_UDP and d.local == LOCAL_UDP and d.data == trying.to_bytes()
    txn.receive_request(invite, 0.4)
    assert [x.data for x in h.take()] == [trying.to_bytes()]
    ringing = _answer(invite, 180)
    txn.respond(ringing, 0.5)
    h.take()
    txn.receive_request(invite, 0.9)
    assert [x.data for x in h.take()] == [ringing.to_bytes()]
    assert txn.state is State.PROCEEDING
    assert h.run_until(1000.0) == []  # nothing is retransmitted in Proceeding


def test_invite_server_non_2xx_retransmits_on_timer_g_until_ack() -> None:
    invite = _upstream_invite()
    txn, h, ended = _server(InviteServerTransaction, invite)
    busy = _answer(invite, 486)
    txn.respond(busy, 10.0)
    assert txn.state is State.COMPLETED
    assert [d.data for d in h.take()] == [busy.to_bytes()]
    fired = h.run_until(18.0)
    # Timer G: T1, 2T1, 4T1, then capped at T2.
    assert [t - 10.0 for t, _ in fired] == [0.5, 1.5, 3.5, 7.5]
    assert all(d.data == busy.to_bytes() and d.dest == PEER_UDP for _, d in fired)
    # A retransmitted INVITE gets the final response again.
    txn.receive_request(invite, 18.0)
    assert [d.data for d in h.take()] == [busy.to_bytes()]
    # Any later response from the core is ignored.
    txn.respond(_answer(invite, 200), 18.1)
    assert h.take() == []
    ack = _request("ACK", via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsrv1", to_tag="uas1")
    assert server_key(ack) == txn.key
    txn.receive_request(ack, 18.2)
    assert txn.state is State.CONFIRMED
    # Confirmed absorbs ACK and INVITE retransmissions; timer I (T4) ends it.
    txn.receive_request(ack, 18.3)
    txn.receive_request(invite, 18.4)
    assert h.take() == []
    assert h.run_until(18.2 + T4 - 0.01) == []
    assert txn.state is State.CONFIRMED and ended == []
    h.run_until(18.2 + T4)
    assert txn.state is State.TERMINATED
    assert ended == [txn]
    assert h.timers.next_deadline() is None


def test_invite_server_timer_h_without_ack() -> None:
    invite = _upstream_invite()
    txn, h, ended = _server(InviteServerTransaction, invite)
    txn.respond(_answer(invite, 408), 0.0)
    h.take()
    fired = h.run_until(100.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert txn.state is State.TERMINATED
    assert ended == [txn]


def test_invite_server_2xx_moves_to_accepted_then_timer_l() -> None:
    invite = _upstream_invite()
    txn, h, ended = _server(InviteServerTransaction, invite)
    txn.respond(_answer(invite, 100, to_tag=None), 0.0)
    h.take()
    ok = _answer(invite, 200)
    txn.respond(ok, 1.0)
    assert txn.state is State.ACCEPTED
    assert [d.data for d in h.take()] == [ok.to_bytes()]
    # The 2xx is not retransmitted by the transaction; INVITE copies are absorbed.
    txn.receive_request(invite, 1.5)
    assert h.take() == []
    assert h.run_until(1.0 + 64 * T1 - 0.01) == []
    # 2xx retransmissions from downstream are passed on (RFC 6026 §7.1); others are not.
    txn.respond(ok, 5.0)
    assert [d.data for d in h.take()] == [ok.to_bytes()]
    txn.respond(_answer(invite, 500), 5.1)
    txn.respond(_answer(invite, 180), 5.2)
    assert h.take() == []
    h.run_until(1.0 + 64 * T1)
    assert txn.state is State.TERMINATED
    assert ended == [txn]


def test_invite_server_over_tcp() -> None:
    invite = _upstream_invite("TCP")
    txn, h, ended = _server(InviteServerTransaction, invite, source=PEER_TCP, local=LOCAL_TCP)
    assert txn.reply_to == PEER_TCP  # back over the connection
    txn.respond(_answer(invite, 486), 0.0)
    assert [d.dest for d in h.take()] == [PEER_TCP]
    assert h.run_until(31.0) == []  # no timer G on a reliable transport
    ack = _request("ACK", via="SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKsrv1", to_tag="uas1")
    txn.receive_request(ack, 1.0)
    assert txn.state is State.TERMINATED  # timer I is zero
    assert ended == [txn]


def test_invite_server_over_tcp_timer_h() -> None:
    invite = _upstream_invite("TCP")
    txn, h, ended = _server(InviteServerTransaction, invite, source=PEER_TCP, local=LOCAL_TCP)
    txn.respond(_answer(invite, 486), 0.0)
    h.take()
    assert h.run_until(31.9) == [] and ended == []
    h.run_until(32.0)
    assert ended == [txn]


# -- non-INVITE server (§17.2.2) ------------------------------------------------------------


def test_non_invite_server_timer_j_absorbs_retransmissions() -> None:
    bye = _request("BYE", via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKbye", to_tag="t")
    txn, h, ended = _server(NonInviteServerTransaction, bye)
    assert txn.state is State.TRYING
    txn.receive_request(bye, 0.1)  # no response yet: nothing to resend
    assert h.take() == []
    ok = _answer(bye, 200)
    txn.respond(ok, 1.0)
    assert txn.state is State.COMPLETED
    assert [d.data for d in h.take()] == [ok.to_bytes()]
    txn.receive_request(bye, 2.0)
    txn.receive_request(bye, 3.0)
    assert [d.data for d in h.take()] == [ok.to_bytes(), ok.to_bytes()]
    txn.respond(_answer(bye, 500), 3.5)  # a second final is ignored
    assert h.take() == []
    assert h.run_until(1.0 + 64 * T1 - 0.01) == []
    assert txn.state is State.COMPLETED
    h.run_until(1.0 + 64 * T1)
    assert txn.state is State.TERMINATED
    assert ended == [txn]


def test_non_invite_server_provisional_then_final() -> None:
    req = _request("OPTIONS", via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKopt")
    txn, h, _ = _server(NonInviteServerTransaction, req)
    trying = _answer(req, 100, to_tag=None)
    txn.respond(trying, 0.0)
    assert txn.state is State.PROCEEDING
    txn.receive_request(req, 0.5)
    assert [d.data for d in h.take()] == [trying.to_bytes(), trying.to_bytes()]
    txn.respond(_answer(req, 200), 1.0)
    assert txn.state is State.COMPLETED


def test_non_invite_server_over_tcp_terminates_on_final() -> None:
    req = _request("BYE", via="SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKbye", to_tag="t")
    txn, h, ended = _server(NonInviteServerTransaction, req, source=PEER_TCP, local=LOCAL_TCP)
    txn.respond(_answer(req, 200), 0.0)
    assert txn.state is State.TERMINATED
    assert ended == [txn]
    assert h.timers.next_deadline() is None


# -- response_address (§18.2.2, RFC 3581 §4) ------------------------------------------------


@pytest.mark.parametrize(
    ("via", "source", "expected"),
    [
        # No rport: the source IP (the `received` address) and the sent-by port.
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1", Address("udp", "192.0.2.9", 40000),
         Address("udp", "192.0.2.9", 5070)),
        ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", Address("udp", "192.0.2.9", 40000),
         Address("udp", "192.0.2.9", 5060)),
        # rport (filled in or not): the source IP and source port.
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;rport", Address("udp", "192.0.2.9", 40000),
         Address("udp", "192.0.2.9", 40000)),
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=192.0.2.9;rport=40000",
         Address("udp", "192.0.2.9", 40000), Address("udp", "192.0.2.9", 40000)),
        # maddr: that address, the sent-by port.
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;maddr=239.1.1.1",
         Address("udp", "192.0.2.9", 40000), Address("udp", "239.1.1.1", 5070)),
        # Reliable transports answer over the connection the request came in on.
        ("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1", Address("tcp", "192.0.2.9", 40000),
         Address("tcp", "192.0.2.9", 40000)),
    ],
)
def test_response_address(via: str, source: Address, expected: Address) -> None:
    assert response_address(_request("OPTIONS", via=via), source) == expected


def test_server_key_matches_ack_and_cancel_to_invite() -> None:
    invite = _request("INVITE", via="SIP/2.0/UDP Host.Example.com:5062;branch=z9hG4bKk")
    ack = _request("ACK", via="SIP/2.0/UDP host.example.com:5062;branch=z9hG4bKk")
    cancel = _request("CANCEL", via="SIP/2.0/UDP host.example.com:5062;branch=z9hG4bKk")
    assert server_key(invite) == server_key(ack) == ("z9hG4bKk", "host.example.com", 5062, "INVITE")
    assert server_key(cancel) == ("z9hG4bKk", "host.example.com", 5062, "CANCEL")
