"""The state tables of `sip/states.py`, enumerated: for every machine, every (state, event)
pair either moves the machine to the table's next state or raises LocalProtocolError naming
the state and the event. Each pair is fed to the real machine through its own entry points
(a transaction's `respond` / `receive_request` / `receive_response` / timers, a dialog's
`on_invite_response` / `on_request` / `delete`, a leg's `hold_event`, a transfer's `after`),
and a table changed at run time changes what the machine does: it reads the table, not a copy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import DialogOps
from switchboard.sip.dialog import Dialog, Leg
from switchboard.sip.errors import LocalProtocolError
from switchboard.sip.states import (
    DIALOG,
    HOLD,
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    SUBSCRIPTION,
    TRANSFER,
    DialogEvent,
    DialogState,
    HoldEvent,
    HoldState,
    SubscriptionEvent,
    SubscriptionState,
    TransactionEvent,
    TransactionState,
    TransferEvent,
    TransferState,
    transition,
)
from switchboard.sip.timers import TimerQueue
from switchboard.sip.transaction import (
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    TimerSettings,
)
from switchboard.sip.wire import Address, Datagram
from tests.unit.kit.callops import (
    ALICE,
    CAROL_URI,
    Net,
    answer,
    established,
    expect_error,
    only_request,
)

Table = Mapping[Any, Mapping[Any, Any]]

TABLES: list[tuple[str, Table, type[enum.IntEnum], type[enum.IntEnum]]] = [
    ("INVITE server transaction", INVITE_SERVER, TransactionState, TransactionEvent),
    ("non-INVITE server transaction", NON_INVITE_SERVER, TransactionState, TransactionEvent),
    ("INVITE client transaction", INVITE_CLIENT, TransactionState, TransactionEvent),
    ("non-INVITE client transaction", NON_INVITE_CLIENT, TransactionState, TransactionEvent),
    ("dialog", DIALOG, DialogState, DialogEvent),
    ("transfer", TRANSFER, TransferState, TransferEvent),
    ("subscription", SUBSCRIPTION, SubscriptionState, SubscriptionEvent),
    ("hold", HOLD, HoldState, HoldEvent),
]


def _pairs(table: Table, states: type[enum.IntEnum], events: type[enum.IntEnum]
           ) -> list[tuple[Any, Any]]:
    return [(s, e) for s in states if s in table for e in events]


def _check(machine: str, table: Table, state: Any, event: Any, step: Callable[[], Any]) -> None:
    """`step` feeds `event` to a machine in `state` and returns the state it is in after."""
    expected = table[state].get(event)
    if expected is None:
        with pytest.raises(LocalProtocolError) as info:
            step()
        message = str(info.value)
        assert machine in message and state.name in message and event.name in message
    else:
        assert step() is expected, (state, event)


# -- the tables themselves ------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "table", "states", "events"), TABLES,
                         ids=[t[0] for t in TABLES])
def test_every_pair_is_a_move_or_a_local_protocol_error(
        machine: str, table: Table, states: type[enum.IntEnum],
        events: type[enum.IntEnum]) -> None:
    assert set(table) <= set(states)
    for state, event in _pairs(table, states, events):
        _check(machine, table, state, event,
               lambda s=state, e=event: transition(machine, table, s, e))
    # Every state a move leads to has a row of its own.
    assert {new for row in table.values() for new in row.values()} <= set(table)


def test_the_transaction_tables_have_no_row_for_a_state_their_machine_never_enters() -> None:
    assert TransactionState.CALLING not in INVITE_SERVER
    assert TransactionState.TRYING not in INVITE_SERVER
    assert set(NON_INVITE_SERVER) == set(NON_INVITE_CLIENT) == {
        TransactionState.TRYING, TransactionState.PROCEEDING, TransactionState.COMPLETED,
        TransactionState.TERMINATED}
    assert TransactionState.CONFIRMED not in INVITE_CLIENT


# -- transactions, through their machines ---------------------------------------------------

LOCAL = Address("udp", "127.0.0.1", 5060)
PEER = Address("udp", "127.0.0.1", 5062)
X = TransactionEvent


def _message(text: str) -> Request | Response:
    return parse_message(text.replace("\n", "\r\n").encode())


def _request(method: str, cseq_method: str | None = None) -> Request:
    msg = _message(
        f"{method} sip:bob@127.0.0.1:5062 SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKtables\n"
        "Max-Forwards: 70\n"
        "From: <sip:alice@example.com>;tag=a\n"
        "To: <sip:bob@example.com>\n"
        "Call-ID: tables@example.com\n"
        f"CSeq: 1 {cseq_method or method}\n"
        "Content-Length: 0\n\n")
    assert isinstance(msg, Request)
    return msg


def _response(method: str, status: int) -> Response:
    msg = _message(
        f"SIP/2.0 {status} Whatever\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKtables\n"
        "From: <sip:alice@example.com>;tag=a\n"
        "To: <sip:bob@example.com>;tag=b\n"
        "Call-ID: tables@example.com\n"
        f"CSeq: 1 {method}\n"
        "Content-Length: 0\n\n")
    assert isinstance(msg, Response)
    return msg


class _User:
    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        pass

    def on_terminated(self, txn: ClientTransaction) -> None:
        pass


def _send(_: Datagram) -> None:
    pass


STATUS = {X.PROVISIONAL: 180, X.SUCCESS: 200, X.FAILURE: 486}
# Each transaction timer, by the method that fires it.
TIMERS = {X.TIMER_A: "_timer_a", X.TIMER_B: "_timer_b", X.TIMER_D: "_timer_d",
          X.TIMER_E: "_timer_e", X.TIMER_F: "_timer_f", X.TIMER_G: "_timer_g",
          X.TIMER_H: "_timer_h", X.TIMER_I: "_timer_i", X.TIMER_J: "_timer_j",
          X.TIMER_K: "_timer_k", X.TIMER_L: "_accepted_over", X.TIMER_M: "_accepted_over"}


def _server(cls: type[ServerTransaction], method: str) -> ServerTransaction:
    txn = cls(_request(method), PEER, LOCAL, _send, TimerQueue(), TimerSettings(),
              lambda _: None)
    txn.last_response = b"SIP/2.0 100 Trying\r\n\r\n"
    return txn


def _client(cls: type[ClientTransaction], method: str) -> ClientTransaction:
    txn = cls(_request(method), PEER, LOCAL, _send, TimerQueue(), TimerSettings(), _User())
    txn.start(0.0)
    return txn


def _entry(txn: ServerTransaction | ClientTransaction, method: str, event: TransactionEvent
           ) -> Callable[[], object] | None:
    """How `event` is fed to `txn` through the machine's own entry points; None when the
    machine has none for it."""
    if event in STATUS:
        response = _response(method, STATUS[event])
        if isinstance(txn, ServerTransaction):
            return lambda: txn.respond(response, 1.0)
        return lambda: txn.receive_response(response, 1.0)
    if event is X.REQUEST and isinstance(txn, ServerTransaction):
        return lambda: txn.receive_request(_request(method), 1.0)
    if event is X.ACK and isinstance(txn, InviteServerTransaction):
        return lambda: txn.receive_request(_request("ACK", "ACK"), 1.0)
    if event is X.SETTLE:
        return lambda: txn.settle(1.0)
    if event is X.TRANSPORT_ERROR and isinstance(txn, ClientTransaction):
        return lambda: txn.transport_error(1.0)
    # Only INVITE transactions are ever Accepted: L on the server side, M on the client side.
    accepted_timer = (X.TIMER_L if isinstance(txn, InviteServerTransaction)
                      else X.TIMER_M if isinstance(txn, InviteClientTransaction) else None)
    if event in (X.TIMER_L, X.TIMER_M) and event is not accepted_timer:
        return None
    if event in TIMERS and hasattr(txn, TIMERS[event]):
        fire: Callable[[float], None] = getattr(txn, TIMERS[event])
        return lambda: fire(1.0)
    return None


MACHINES: list[tuple[str, Table, Callable[[], ServerTransaction | ClientTransaction], str]] = [
    ("INVITE server transaction", INVITE_SERVER,
     lambda: _server(InviteServerTransaction, "INVITE"), "INVITE"),
    ("non-INVITE server transaction", NON_INVITE_SERVER,
     lambda: _server(NonInviteServerTransaction, "BYE"), "BYE"),
    ("INVITE client transaction", INVITE_CLIENT,
     lambda: _client(InviteClientTransaction, "INVITE"), "INVITE"),
    ("non-INVITE client transaction", NON_INVITE_CLIENT,
     lambda: _client(NonInviteClientTransaction, "BYE"), "BYE"),
]


@pytest.mark.parametrize(("machine", "table", "make", "method"), MACHINES,
                         ids=[m[0] for m in MACHINES])
def test_each_transaction_moves_by_its_table(
        machine: str, table: Table,
        make: Callable[[], ServerTransaction | ClientTransaction], method: str) -> None:
    checked = 0
    for state, event in _pairs(table, TransactionState, TransactionEvent):
        txn = make()
        txn.state = state
        feed = _entry(txn, method, event)
        if feed is None:
            # Nothing can feed it to this machine, and no row expects it.
            assert all(event not in row for row in table.values()), (machine, event)
            continue

        def step(t: ServerTransaction | ClientTransaction = txn,
                 f: Callable[[], object] = feed) -> Any:
            f()
            return t.state

        _check(machine, table, state, event, step)
        checked += 1
    assert checked >= len(table) * 4


def test_a_transaction_reads_its_table_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    txn = _server(InviteServerTransaction, "INVITE")
    monkeypatch.setitem(INVITE_SERVER, TransactionState.PROCEEDING, {})
    with pytest.raises(LocalProtocolError, match="REQUEST is not allowed in state PROCEEDING"):
        txn.receive_request(_request("INVITE"), 1.0)


# -- dialogs ------------------------------------------------------------------------------


def _dialog(state: DialogState) -> Dialog:
    invite = _request("INVITE")
    dialog = Dialog.from_invite("0.1", invite, PEER, LOCAL, 0.0)
    dialog.state = state
    return dialog


def _invite_response(status: int, tag: bool = True) -> Response:
    msg = _message(
        f"SIP/2.0 {status} Whatever\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKtables\n"
        "From: <sip:alice@example.com>;tag=a\n"
        f"To: <sip:bob@example.com>{';tag=b' if tag else ''}\n"
        "Call-ID: tables@example.com\n"
        "CSeq: 1 INVITE\n"
        "Contact: <sip:bob@127.0.0.1:5062>\n"
        "Content-Length: 0\n\n")
    assert isinstance(msg, Response)
    return msg


def _dialog_step(dialog: Dialog, event: DialogEvent) -> DialogState:
    emitted: list[object] = []
    if event is DialogEvent.TRYING:
        dialog.on_invite_response(_invite_response(100, tag=False), 0, PEER, LOCAL,
                                  emitted.append)
    elif event is DialogEvent.PROVISIONAL:
        dialog.on_invite_response(_invite_response(180), 0, PEER, LOCAL, emitted.append)
    elif event is DialogEvent.SUCCESS:
        dialog.on_invite_response(_invite_response(200), 0, PEER, LOCAL, emitted.append)
    elif event is DialogEvent.FAILURE:
        dialog.on_invite_response(_invite_response(486), 0, PEER, LOCAL, emitted.append)
    elif event is DialogEvent.ACK:
        dialog.on_request(_request("ACK", "ACK"), dialog.caller, emitted.append)
    elif event is DialogEvent.BYE:
        dialog.on_request(_request("BYE"), dialog.caller, emitted.append)
    else:
        dialog.delete("test", emitted.append)
    return dialog.state


def test_the_dialog_moves_by_its_table() -> None:
    for state, event in _pairs(DIALOG, DialogState, DialogEvent):
        dialog = _dialog(state)
        _check("dialog", DIALOG, state, event, lambda d=dialog, e=event: _dialog_step(d, e))


def test_a_provisional_without_a_to_tag_makes_no_early_dialog() -> None:
    dialog = _dialog(DialogState.UNCONFIRMED)
    dialog.on_invite_response(_invite_response(180, tag=False), 0, PEER, LOCAL, lambda _: None)
    assert dialog.state is DialogState.UNCONFIRMED and dialog.callee.tag == ""


def test_the_dialog_reads_its_table_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    dialog = _dialog(DialogState.CONFIRMED_NA)
    monkeypatch.setitem(DIALOG, DialogState.CONFIRMED_NA, {})
    with pytest.raises(LocalProtocolError, match="ACK is not allowed in state CONFIRMED_NA"):
        dialog.on_request(_request("ACK", "ACK"), dialog.caller, lambda _: None)


# -- a leg's hold re-INVITE ------------------------------------------------------------------


def _hold_step(leg: Leg, event: HoldEvent) -> HoldState:
    leg.hold_event(event)
    return leg.hold_state


def test_a_legs_hold_state_moves_by_its_table() -> None:
    for state, event in _pairs(HOLD, HoldState, HoldEvent):
        leg = Leg(hold_state=state)
        assert leg.reinvite_pending is (state is not HoldState.IDLE)
        _check("hold", HOLD, state, event, lambda g=leg, e=event: _hold_step(g, e))


def test_hold_reads_the_table_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net()
    call = established(net)
    monkeypatch.setitem(HOLD, HoldState.IDLE, {})
    with pytest.raises(LocalProtocolError, match="OFFER is not allowed in state IDLE"):
        net.callops.hold(call.call_id, "caller", None, net.now)


# -- a transfer and its subscription ----------------------------------------------------------


def test_a_transfer_moves_by_its_tables() -> None:
    for state, event in _pairs(TRANSFER, TransferState, TransferEvent):
        ops = DialogOps(state=state)
        assert ops.busy is (TransferEvent.START not in TRANSFER[state])
        _check("transfer", TRANSFER, state, event, lambda o=ops, e=event: o.after(e))
    for sub, sub_event in _pairs(SUBSCRIPTION, SubscriptionState, SubscriptionEvent):
        ops = DialogOps(subscription=sub)
        _check("subscription", SUBSCRIPTION, sub, sub_event,
               lambda o=ops, e=sub_event: o.subscription_after(e))


def test_a_transfer_reads_its_table_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state with no START is busy: the table alone decides that a transfer waits."""
    net = Net()
    call = established(net)
    monkeypatch.setitem(TRANSFER, TransferState.IDLE, {})
    expect_error(491, "Request Pending", net.callops.transfer, call.call_id, "caller",
                 CAROL_URI, net.now)
    assert net.take() == []


def test_a_refused_refer_ends_the_transfer_and_gives_up_its_subscription() -> None:
    net = Net()
    call = established(net)
    net.callops.transfer(call.call_id, "caller", CAROL_URI, net.now)
    ops = net.callops.ops_of(call.dialog)
    assert (ops.state, ops.subscription) == (TransferState.REFERRING, SubscriptionState.ACTIVE)
    assert ops.busy and ops.transfer_leg == "caller"
    refer = only_request(net.take(), ALICE)
    net.send(answer(refer, 603, "Decline"), ALICE)
    assert (ops.state, ops.subscription) == (TransferState.IDLE, SubscriptionState.NONE)
    assert not ops.busy and ops.transfer_leg == "" and ops.last_leg == "caller"
