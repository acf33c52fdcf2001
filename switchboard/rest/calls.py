"""Calls as the REST API shows them, made from the node's `dialog:list` objects: their legs,
state, hold state and transfer links. The node pages them (`ControlApi.list_page`: a page
costs what it shows); the cursor is a dialog's number. Knows no HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from switchboard.actors.listing import user_of as user_of
from switchboard.events.opensips import db_id

from .tracker import OperationTracker

# OpenSIPS' dialog state numbers (`dialog:list` "state").
STATE_NAMES: Final[dict[int, str]] = {
    1: "unconfirmed", 2: "early", 3: "answered", 4: "confirmed", 5: "ended"}
STATES: Final = tuple(STATE_NAMES.values())
STATE_NUMBERS: Final = {name: number for number, name in STATE_NAMES.items()}
_DIRECTION = re.compile(rb"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", re.MULTILINE)
_DIALOG_ID = re.compile(r"[0-9a-f]{1,8}\.[0-9a-f]{1,8}\Z")


def media_direction(sdp: str) -> str | None:
    """The media direction an SDP states last (stream level wins: RFC 3264 §5.1); sendrecv
    when it states none; None without an SDP."""
    if not sdp:
        return None
    found = _DIRECTION.findall(sdp.encode("utf-8", "surrogateescape").replace(b"\r", b""))
    return found[-1].decode() if found else "sendrecv"


def call_view(dialog: Mapping[str, Any], tracker: OperationTracker) -> dict[str, Any]:
    call_id = str(dialog.get("callid", ""))
    held = tracker.held(call_id)
    callees = dialog.get("CALLEES") or [{}]
    callee = callees[0] if isinstance(callees, list) and callees else {}
    legs = []
    for name, tag, contact, sdp in (
            ("caller", dialog.get("caller_tag", ""), dialog.get("caller_contact", ""),
             dialog.get("caller_sdp", "")),
            ("callee", callee.get("callee_tag", ""), callee.get("callee_contact", ""),
             callee.get("callee_sdp", ""))):
        direction = media_direction(str(sdp or ""))
        on_hold = held.get(name)
        if on_hold is None:
            on_hold = direction is not None and direction != "sendrecv"
        legs.append({"leg": name, "tag": str(tag or ""), "contact": str(contact or ""),
                     "media": direction, "on_hold": on_hold})
    hold = [leg["leg"] for leg in legs if leg["on_hold"]]
    state = dialog.get("state")
    return {
        "id": str(dialog.get("ID", "")),
        "call_id": call_id,
        "state": STATE_NAMES.get(state, "unknown") if isinstance(state, int) else "unknown",
        "from": str(dialog.get("from_uri", "")),
        "to": str(dialog.get("to_uri", "")),
        "from_user": user_of(str(dialog.get("from_uri", ""))),
        "to_user": user_of(str(dialog.get("to_uri", ""))),
        "started_at": dialog.get("timestart", 0),
        "legs": legs,
        "hold": "both" if len(hold) == 2 else hold[0] if hold else "none",
        "transfers": tracker.links(call_id),
    }


def dialog_number(key: str) -> int | None:
    """The number (`db_id`) of a dialog id (`<worker hex>.<sequence hex>`); None when `key`
    is none."""
    return db_id(key) if _DIALOG_ID.match(key) else None
