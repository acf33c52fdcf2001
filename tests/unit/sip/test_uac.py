"""The proxy's own user agent client (switchboard/sip/uac.py): a request sent inside a
dialog as one party to the other, its answers ending here, the ACK of a 2xx to its own
INVITE, and the final answer told once to whoever asked."""

from __future__ import annotations

from switchboard.sip import Request, Response
from switchboard.sip.dialog import Dialog
from tests.unit.kit.proxy import ALICE_CONTACT, BOB, BOB_CONTACT, SDP, Call, Net, parsed, reply


def confirmed(net: Net) -> Dialog:
    Call(net).establish()
    dialog = net.proxy.dialogs.by_call_id("call-1@alice")
    assert dialog is not None
    return dialog


def test_an_invite_of_our_own_is_acked_here_and_its_final_answer_told_once() -> None:
    net = Net()
    dialog = confirmed(net)
    finals: list[tuple[int, str, float]] = []
    # A re-INVITE to Bob as if Alice sent it: the next number of Alice's sequence.
    assert net.proxy.uac.send(dialog, dialog.callee, dialog.caller, "INVITE", [], SDP,
                              lambda status, reason, now: finals.append((status, reason, now)),
                              net.now)
    ((dest, sent),) = parsed(net.take())
    assert dest == BOB and isinstance(sent, Request)
    assert sent.start_line() == f"INVITE {BOB_CONTACT} SIP/2.0"
    assert (sent.from_tag, sent.to_tag, sent.cseq.number) == ("alice-tag", "bob-tag", 2)
    assert (sent.top_via.branch or "").startswith("z9hG4bK")

    ok = reply(sent, 200, body=SDP)
    ((dest, ack),) = parsed(net.send(ok, BOB))  # nothing goes up to Alice
    assert dest == BOB and isinstance(ack, Request)
    assert ack.start_line() == f"ACK {BOB_CONTACT} SIP/2.0"  # to the 2xx's Contact
    assert (ack.cseq.number, ack.cseq.method, ack.to_tag) == (2, "ACK", "bob-tag")
    assert finals == [(200, "Reason", net.now)]

    # A retransmitted 2xx gets the same ACK again, and nobody hears of it twice.
    assert [d.data for d in net.send(ok, BOB)] == [ack.to_bytes()]
    assert finals == [(200, "Reason", net.now)]


def test_an_unanswered_request_of_our_own_times_out_as_408_once() -> None:
    net = Net()
    dialog = confirmed(net)
    finals: list[int] = []
    assert net.proxy.uac.send(dialog, dialog.caller, dialog.callee, "INFO", [], b"",
                              lambda status, reason, now: finals.append(status), net.now)
    ((_, info),) = parsed(net.take())
    assert isinstance(info, Request)
    assert info.start_line() == f"INFO {ALICE_CONTACT} SIP/2.0"
    net.run_all_timers()
    assert finals == [408]
    assert net.proxy.client_txns == {}


def test_a_provisional_answer_is_not_final() -> None:
    net = Net()
    dialog = confirmed(net)
    finals: list[int] = []
    assert net.proxy.uac.send(dialog, dialog.callee, dialog.caller, "INVITE", [], SDP,
                              lambda status, reason, now: finals.append(status), net.now)
    ((_, sent),) = parsed(net.take())
    assert isinstance(sent, Request)
    assert net.send(reply(sent, 180), BOB) == []
    assert finals == []
    out = parsed(net.send(reply(sent, 486), BOB))
    # Our INVITE transaction ACKs the non-2xx itself, hop by hop (§17.1.1.3).
    assert [(dest, m.start_line()) for dest, m in out] == [(BOB, f"ACK {BOB_CONTACT} SIP/2.0")]
    assert not any(isinstance(m, Response) for _, m in out)  # nothing goes up to Alice
    assert finals == [486]
