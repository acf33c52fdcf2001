"""The OpenSIPS-shaped events (name and parameters, spec/callops.md §8) made from what the core
reports: the one place where the `E_*` parameter dicts are written.

An event a tracked operation caused (one the REST API made) carries two members OpenSIPS has
not: `operation_id` (`envelope.OPERATION_ID`), and in the answer of a hold re-INVITE its
`status` line. An untracked operation's events are exactly OpenSIPS'.
"""

from __future__ import annotations

from typing import Any

from ..sip.dialog import DialogStateChanged
from ..sip.events import (
    CallEvent,
    HoldAnswered,
    HoldStarted,
    TransferLinked,
    TransferNotified,
    TransferStarted,
)
from . import E_CALL_HOLD, E_CALL_TRANSFER, E_DLG_STATE_CHANGED
from .envelope import OPERATION_ID


def opensips_event(event: DialogStateChanged | CallEvent) -> tuple[str, dict[str, Any]]:
    """(event name, parameters) as the OpenSIPS dialog and callops modules raise them."""
    if isinstance(event, DialogStateChanged):
        return E_DLG_STATE_CHANGED, {
            "id": event.dialog_id,
            "db_id": db_id(event.dialog_id),
            "callid": event.call_id,
            "from_tag": event.from_tag,
            "to_tag": event.to_tag,
            "old_state": int(event.old_state),
            "new_state": int(event.new_state),
        }
    if isinstance(event, HoldStarted | HoldAnswered):
        state = "start" if isinstance(event, HoldStarted) else "ok" if event.ok else "fail"
        hold: dict[str, Any] = {"callid": event.call_id, "leg": event.leg,
                                "action": event.action, "state": state}
        if event.operation_id is not None:
            if isinstance(event, HoldAnswered):
                hold["status"] = event.status
            hold[OPERATION_ID] = event.operation_id
        return E_CALL_HOLD, hold
    if isinstance(event, TransferStarted | TransferLinked):
        state, status, destination = "start", "", event.destination
    elif isinstance(event, TransferNotified):
        state, status, destination = "notify", event.status, ""
    else:
        state = "ok" if event.ok else "fail"
        status, destination = event.status, event.destination
    params: dict[str, Any] = {
        "callid": event.call_id,
        "leg": event.leg,
        "transfer_callid": event.transfer_callid,
        "destination": destination,
        "state": state,
        "status": status,
    }
    if event.operation_id is not None:
        params[OPERATION_ID] = event.operation_id
    return E_CALL_TRANSFER, params


def event_name(event: DialogStateChanged | CallEvent) -> str:
    """The name `opensips_event` gives `event`, without making its parameters."""
    if isinstance(event, DialogStateChanged):
        return E_DLG_STATE_CHANGED
    return E_CALL_HOLD if isinstance(event, HoldStarted | HoldAnswered) else E_CALL_TRANSFER


def db_id(dialog_id: str) -> int:
    """The 64-bit number OpenSIPS gives a dialog: worker (hash entry) and sequence."""
    worker, _, seq = dialog_id.partition(".")
    return (int(worker, 16) << 32) | int(seq, 16)
