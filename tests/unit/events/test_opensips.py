"""The OpenSIPS-shaped events made from the core's event values: every kind, every field."""

from __future__ import annotations

import dataclasses

import pytest

from switchboard.events.opensips import db_id, opensips_event
from switchboard.sip.dialog import DialogState, DialogStateChanged
from switchboard.sip.events import (
    HoldAnswered,
    HoldStarted,
    TransferEnded,
    TransferLinked,
    TransferNotified,
    TransferStarted,
)


def transfer(state: str, transfer_callid: str, destination: str, status: str) -> dict[str, str]:
    return {"callid": "c1", "leg": "caller", "transfer_callid": transfer_callid,
            "destination": destination, "state": state, "status": status}


@pytest.mark.parametrize(("event", "name", "params"), [
    (TransferStarted("c1", "caller", "", "sip:carol@x"), "E_CALL_TRANSFER",
     transfer("start", "", "sip:carol@x", "")),
    (TransferLinked("c1", "caller", "c2", "sip:carol@x"), "E_CALL_TRANSFER",
     transfer("start", "c2", "sip:carol@x", "")),
    (TransferNotified("c1", "caller", "c2", "SIP/2.0 180 Ringing"), "E_CALL_TRANSFER",
     transfer("notify", "c2", "", "SIP/2.0 180 Ringing")),
    (TransferEnded("c1", "caller", "c2", "sip:carol@x", True, "200 OK"), "E_CALL_TRANSFER",
     transfer("ok", "c2", "sip:carol@x", "200 OK")),
    (TransferEnded("c1", "caller", "", "sip:carol@x", False, "603 Decline"), "E_CALL_TRANSFER",
     transfer("fail", "", "sip:carol@x", "603 Decline")),
    (HoldStarted("c1", "callee", "hold"), "E_CALL_HOLD",
     {"callid": "c1", "leg": "callee", "action": "hold", "state": "start"}),
    (HoldAnswered("c1", "callee", "unhold", True), "E_CALL_HOLD",
     {"callid": "c1", "leg": "callee", "action": "unhold", "state": "ok"}),
    (HoldAnswered("c1", "callee", "hold", False), "E_CALL_HOLD",
     {"callid": "c1", "leg": "callee", "action": "hold", "state": "fail"}),
    (DialogStateChanged("a.1f", "c1", "t1", "t2", DialogState.EARLY, DialogState.CONFIRMED_NA),
     "E_DLG_STATE_CHANGED",
     {"id": "a.1f", "db_id": (10 << 32) | 0x1F, "callid": "c1", "from_tag": "t1",
      "to_tag": "t2", "old_state": 2, "new_state": 3}),
])
def test_each_event_becomes_its_opensips_name_and_parameters(
        event: object, name: str, params: dict[str, object]) -> None:
    got = opensips_event(event)  # type: ignore[arg-type]
    assert got == (name, params)
    assert all(type(v) in (str, int) for v in got[1].values())  # no enum leaks to the wire


def test_call_events_are_frozen_values() -> None:
    event = TransferStarted("c1", "caller", "", "d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.leg = "callee"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")  # slotted


def test_db_id_is_the_worker_and_sequence() -> None:
    assert db_id("0.1") == 1
    assert db_id("ff.ffffffff") == (0xFF << 32) | 0xFFFFFFFF


@pytest.mark.parametrize(("event", "extra"), [
    (TransferStarted("c1", "caller", "", "sip:carol@x", "op1"), {}),
    (TransferNotified("c1", "caller", "c2", "SIP/2.0 180 Ringing", "op1"), {}),
    (TransferEnded("c1", "caller", "c2", "sip:carol@x", True, "200 OK", "op1"), {}),
    (HoldStarted("c1", "callee", "hold", "op1"), {}),
    (HoldAnswered("c1", "callee", "hold", False, "488 Not Acceptable Here", "op1"),
     {"status": "488 Not Acceptable Here"}),
])
def test_a_tracked_operation_s_events_name_it(event: object,
                                              extra: dict[str, str]) -> None:
    """The parameters of the untracked event, then the answer's status (a hold's) and the
    operation id, last."""
    untracked = dataclasses.replace(event, operation_id=None)  # type: ignore[type-var]
    name, params = opensips_event(event)  # type: ignore[arg-type]
    assert (name, params) == (name, {**opensips_event(untracked)[1], **extra,
                                     "operation_id": "op1"})
    assert list(params)[-1] == "operation_id"
