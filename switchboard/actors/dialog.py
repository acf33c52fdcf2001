"""DialogActor: a dialog's mailbox for operations that act on the call from the proxy side.

SIP messages of a dialog are applied by the worker's proxy core in arrival order; operations
from the control plane (a transfer, a hold or unhold, the end of the call: `sip.operations`)
arrive here and run one at a time against the dialog's state machine. Also renders a dialog
the way OpenSIPS `dialog:list` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ..events.opensips import db_id
from ..sip.dialog import Dialog
from ..sip.operations import Operation
from .mailbox import Mailbox


class DialogActor(Mailbox[Operation]):
    """A dialog's mailbox: operations (`sip.operations`) are handled one at a time against
    its state; `ask` answers with a future."""

    __slots__ = ("dialog",)

    def __init__(self, dialog: Dialog, handle: Callable[[Dialog, Operation], None]) -> None:
        super().__init__(partial(handle, dialog))
        self.dialog = dialog


def _text(sdp: bytes | None) -> str:
    # An SDP is bytes (a body is never decoded by the core): text for a reader, so a byte
    # that is not UTF-8 becomes U+FFFD.
    return sdp.decode("utf-8", "replace") if sdp else ""


def dialog_info(dialog: Dialog, to_wall: Callable[[float], float]) -> dict[str, Any]:
    """The OpenSIPS `dialog:list` object for one dialog (fields that apply to a proxy).

    URIs, tags, contacts and route sets are the dialog's wire text as it is, with any byte
    that is not UTF-8 still a lone surrogate: the MI's encoder writes those as `\\xNN`, a
    cluster's msgpack carries them as they are (`switchboard.readout`)."""
    start = to_wall(dialog.start_time)
    timeout = to_wall(dialog.timeout_at) if dialog.timeout_at is not None else 0.0
    caller, callee = dialog.caller, dialog.callee
    return {
        "ID": dialog.id,
        "db_id": db_id(dialog.id),
        "state": int(dialog.state),
        "user_flags": 0,
        "timestart": int(start),
        "datestart": time.ctime(start),
        "timeout": int(timeout),
        "dateout": time.ctime(timeout) if timeout else "",
        "callid": dialog.call_id,
        "from_uri": dialog.from_uri,
        "to_uri": dialog.to_uri,
        "caller_tag": caller.tag,
        "caller_contact": caller.contact,
        "callee_cseq": str(callee.cseq),
        "caller_route_set": ",".join(caller.route_set),
        "caller_bind_addr": str(caller.local) if caller.local else "",
        "caller_sdp": _text(caller.sdp),
        "CALLEES": [
            {
                "callee_tag": callee.tag,
                "callee_contact": callee.contact,
                "caller_cseq": str(caller.cseq),
                "callee_route_set": ",".join(callee.route_set),
                "callee_bind_addr": str(callee.local) if callee.local else "",
                "callee_sdp": _text(callee.sdp),
            }
        ] if callee.tag else [],
    }
