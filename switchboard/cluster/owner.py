"""Which worker of a node owns a SIP message, read from its bytes before it is parsed.

When the workers of a node share one address, the kernel gives a message to whichever
worker's socket it picks; this says which worker the message belongs to, from the marks the
workers write (`sip/addressing.py`: `WORKER_PARAM`, `BRANCH_MARK`) and from the Call-ID:

- a response: the mark at the end of the branch of its top Via, which the worker that sent
  the request wrote;
- a request that carries our Record-Route back (its top Route, or its Request-URI when the
  sender routes strictly, RFC 3261 §16.4): the mark in that URI;
- a request whose Request-URI has the transfer's match parameter (`;osid=<dialog id>`): the
  worker whose number prefixes that dialog id (`sip.dialog.worker_of`), so a transferred
  call, its CANCEL and the ACK of its failure land next to the call they replace;
- any other request, and a response without a mark: a hash of the Call-ID over the node's
  workers, so a CANCEL, a retransmission and the ACK of a non-2xx answer meet their INVITE.

A mark naming a worker that is not on this node yields no owner: the message is handled
where it is (as a single worker handles a message of a dialog it does not know); a
transferred call whose old call is not on this node is a new request like any other. Nothing
here raises on bad input: what cannot be read has no owner, and the parser of the worker
that has it answers it. Knows nothing of Ray, sockets or how a message is handed over.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Final

from ..sip.addressing import BRANCH_MARK, WORKER_PARAM
from ..sip.dialog import worker_of

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Header lines, searched in the header section only (a message/sipfrag body may hold some).
_CALL_ID: Final = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_TOP_VIA: Final = re.compile(rb"\n(?:via|v)[ \t]*:[ \t]*([^\r\n,]*)", re.IGNORECASE)
_ROUTE: Final = re.compile(rb"\nroute[ \t]*:[ \t]*([^\r\n,]*)", re.IGNORECASE)
_BRANCH: Final = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]*)", re.IGNORECASE)
_ROUTE_MARK: Final = b";" + WORKER_PARAM.encode()
_BRANCH_MARK: Final = BRANCH_MARK.encode()


def _hex_number(text: bytes) -> int | None:
    if not text or len(text) > 8 or not _HEX.issuperset(text):
        return None
    return int(text, 16)


def _header_end(data: bytes) -> int:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return len(data) if end < 0 else end + 1


def branch_worker(data: bytes, end: int) -> int | None:
    """The worker mark at the end of the top Via's branch, None when there is none."""
    via = _TOP_VIA.search(data, 0, end)
    if via is None:
        return None
    branch = _BRANCH.search(via.group(1))
    if branch is None:
        return None
    value = branch.group(1)
    at = value.rfind(_BRANCH_MARK)
    return None if at < 0 else _hex_number(value[at + len(_BRANCH_MARK):])


def _uri_param(uri: bytes, prefix: bytes) -> bytes | None:
    """The value of the URI parameter `prefix` (`;name=`) in `uri`, up to the next
    parameter, header part or the end of the URI."""
    at = uri.find(prefix)
    if at < 0:
        return None
    start = at + len(prefix)
    stop = start
    while stop < len(uri) and uri[stop] not in b";?>, \t\r\n":
        stop += 1
    return uri[start:stop]


def route_worker(data: bytes, ruri: bytes, end: int) -> int | None:
    """The worker mark of our Record-Route as a request brings it back: in its top Route,
    or in its Request-URI (a strict router puts our URI there)."""
    route = _ROUTE.search(data, 0, end)
    if route is not None:
        value = route.group(1)
        close = value.find(b">")
        mark = _uri_param(value if close < 0 else value[:close], _ROUTE_MARK)
        if mark is not None:
            return _hex_number(mark)
    mark = _uri_param(ruri, _ROUTE_MARK)
    return _hex_number(mark) if mark is not None else None


def transferred_worker(ruri: bytes, match_param: bytes) -> int | None:
    """The worker whose dialog a transferred call's Request-URI names (`;osid=<id>`)."""
    value = _uri_param(ruri, match_param)
    if not value:
        return None
    try:
        return worker_of(value.decode("ascii"))
    except UnicodeDecodeError:
        return None


def call_id_of(data: bytes, end: int) -> bytes | None:
    found = _CALL_ID.search(data, 0, end)
    return found.group(1).strip() if found is not None else None


def hashed_worker(call_id: bytes, members: Sequence[int]) -> int:
    """The worker a Call-ID belongs to among `members` (sorted, as every worker of the node
    sees them): the same answer on every worker, for every message of the call."""
    return members[zlib.crc32(call_id) % len(members)]


class Ownership:
    """The workers of one node and the rules above; `owner(data)` says whose a message is.

    `members` are the worker numbers that share this node's address (sorted); `update`
    replaces them when workers join or leave. A message's owner is None when no worker of
    the node can be named for it (then the worker that has it handles it).
    """

    __slots__ = ("_match", "members")

    def __init__(self, members: Sequence[int], match_param: str = "osid") -> None:
        self.members: tuple[int, ...] = tuple(sorted(set(members)))
        self._match = f";{match_param}=".encode() if match_param else b""

    def update(self, members: Sequence[int]) -> None:
        self.members = tuple(sorted(set(members)))

    def owner(self, data: bytes) -> int | None:
        members = self.members
        if not members:
            return None
        end = _header_end(data)
        if data.startswith(b"SIP/"):
            marked = branch_worker(data, end)
        else:
            line_end = data.find(b"\n", 0, end)
            first = data[:line_end if line_end >= 0 else end]
            ruri = first[first.find(b" ") + 1:first.rfind(b" ")]
            marked = route_worker(data, ruri, end)
            if marked is None and self._match:
                # A new request: one whose dialog is not here is routed as any other.
                transferred = transferred_worker(ruri, self._match)
                if transferred is not None and transferred in members:
                    return transferred
        if marked is not None:
            return marked if marked in members else None
        call_id = call_id_of(data, end)
        if not call_id:
            return None
        return hashed_worker(call_id, members)
