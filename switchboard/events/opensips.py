"""The OpenSIPS-shaped events (name and parameters, spec/callops.md §8) made from what the core
reports: the one place where the `E_*` parameter dicts are written.
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
        return E_CALL_HOLD, {"callid": event.call_id, "leg": event.leg,
                             "action": event.action, "state": state}
    if isinstance(event, TransferStarted | TransferLinked):
        state, status, destination = "start", "", event.destination
    elif isinstance(event, TransferNotified):
        state, status, destination = "notify", event.status, ""
    else:
        state = "ok" if event.ok else "fail"
        status, destination = event.status, event.destination
    return E_CALL_TRANSFER, {
        "callid": event.call_id,
        "leg": event.leg,
        "transfer_callid": event.transfer_callid,
        "destination": destination,
        "state": state,
        "status": status,
    }


def db_id(dialog_id: str) -> int:
    """The 64-bit number OpenSIPS gives a dialog: worker (hash entry) and sequence."""
    worker, _, seq = dialog_id.partition(".")
    return (int(worker, 16) << 32) | int(seq, 16)
