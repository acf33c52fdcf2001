"""Calls as the REST API shows them, made from the node's `dialog:list` objects: their legs,
state, hold state and transfer links, filtered and paged by a cursor.

A long list is gone through a slice at a time with the event loop turning in between (as
`dialog:list` itself is built and encoded), so listing every call does not hold SIP up.
Knows no HTTP.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .tracker import OperationTracker

SLICE: Final = 500

# OpenSIPS' dialog state numbers (`dialog:list` "state").
STATE_NAMES: Final[dict[int, str]] = {
    1: "unconfirmed", 2: "early", 3: "answered", 4: "confirmed", 5: "ended"}
STATES: Final = tuple(STATE_NAMES.values())
_DIRECTION = re.compile(rb"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", re.MULTILINE)
_DIALOG_ID = re.compile(r"[0-9a-f]+\.[0-9a-f]+\Z")


def user_of(uri: str) -> str:
    """The user part of a SIP or tel URI (`sip:alice@host;x` -> `alice`), "" when none."""
    text = uri.strip()
    if "<" in text:
        text = text.partition("<")[2].partition(">")[0]
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips", "tel"):
        return ""
    if scheme.lower() == "tel":
        return rest.partition(";")[0]
    user, at, _ = rest.partition("@")
    return user.partition(";")[0] if at else ""


def media_direction(sdp: str) -> str | None:
    """The media direction an SDP states last (stream level wins: RFC 3264 §5.1); sendrecv
    when it states none; None without an SDP."""
    if not sdp:
        return None
    found = _DIRECTION.findall(sdp.encode("utf-8", "surrogateescape").replace(b"\r", b""))
    return found[-1].decode() if found else "sendrecv"


def order_key(dialog: Mapping[str, Any]) -> int:
    """The order calls are listed in: the dialog's number (worker, then creation order)."""
    try:
        return int(dialog.get("db_id", 0))
    except (TypeError, ValueError):
        return 0


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


@dataclass(frozen=True, slots=True)
class CallFilter:
    state: str | None = None
    from_user: str | None = None
    to_user: str | None = None

    def matches(self, dialog: Mapping[str, Any]) -> bool:
        if self.state is not None and STATE_NAMES.get(dialog.get("state", 0)) != self.state:
            return False
        if self.from_user is not None and user_of(str(dialog.get("from_uri", ""))) != (
                self.from_user):
            return False
        return self.to_user is None or user_of(str(dialog.get("to_uri", ""))) == self.to_user


async def page(dialogs: list[dict[str, Any]], wanted: CallFilter, after: int | None,
               limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """The first `limit` dialogs that match, in `order_key` order, after the cursor `after`;
    and the cursor of the next page (None when this is the last). Consumes `dialogs`."""
    chosen: list[tuple[int, int, dict[str, Any]]] = []
    for start in range(0, len(dialogs), SLICE):
        if start:
            await asyncio.sleep(0)  # let SIP traffic through between slices
        for index in range(start, min(start + SLICE, len(dialogs))):
            dialog = dialogs[index]
            dialogs[index] = {}  # let go as we go, like the MI's encoder
            key = order_key(dialog)
            if (after is not None and key <= after) or not wanted.matches(dialog):
                continue
            item = (-key, index, dialog)
            if len(chosen) <= limit:
                heapq.heappush(chosen, item)
            else:
                heapq.heappushpop(chosen, item)
    ordered = sorted(chosen, key=lambda item: (-item[0], item[1]))
    more = len(ordered) > limit
    ordered = ordered[:limit]
    next_cursor = -ordered[-1][0] if more and ordered else None
    return [dialog for _, _, dialog in ordered], next_cursor


def looks_like_dialog_id(key: str) -> bool:
    return bool(_DIALOG_ID.match(key))
