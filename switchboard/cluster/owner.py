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

_HEX: Final = frozenset(b"0123456789abcdef")
_SPACE: Final = (32, 9)
_COLON: Final = 58
# Header names as they start a line of the lower-cased header section (compact forms too).
_VIA: Final = (b"\nvia", b"\nv")
_ROUTE: Final = (b"\nroute",)
_CALL_ID: Final = (b"\ncall-id", b"\ni")
_BRANCH: Final = b"branch"
_EQUAL: Final = 61
_ROUTE_MARK: Final = b";" + WORKER_PARAM.encode()
_BRANCH_MARK: Final = BRANCH_MARK.encode()
_PARAM_VALUE: Final = re.compile(rb"[^;?>, \t\r\n]*")
_MASK: Final = 0xFFFFFFFF
_GOLDEN: Final = 0x9E3779B1  # 2^32 / the golden ratio: spreads small worker numbers apart


def _hex_number(text: bytes) -> int | None:
    if not text or len(text) > 8 or not _HEX.issuperset(text):
        return None
    return int(text, 16)


def _value_at(head: bytes, names: tuple[bytes, ...]) -> tuple[int, int]:
    """(start, end) of the value of the first header line of `head` (the header section in
    lower case) named one of `names`; (-1, -1) when there is none. Whitespace may come
    before the colon (RFC 3261 §7.3.1)."""
    first = start = -1
    size = len(head)
    for name in names:
        at = head.find(name)
        while at >= 0:
            i = at + len(name)
            while i < size and head[i] in _SPACE:
                i += 1
            if i < size and head[i] == _COLON:
                if first < 0 or at < first:
                    first, start = at, i + 1
                break
            at = head.find(name, at + 1)
    if first < 0:
        return -1, -1
    stop = head.find(b"\n", start)
    return start, size if stop < 0 else stop


def _token(text: bytes) -> bytes:
    """`text` up to the end of the parameter value it starts with."""
    found = _PARAM_VALUE.match(text)
    return found.group() if found is not None else b""


def _uri_param(uri: bytes, prefix: bytes) -> bytes | None:
    """The value of the URI parameter `prefix` (`;name=`) in `uri`, up to the next
    parameter, header part or the end of the URI."""
    at = uri.find(prefix)
    return None if at < 0 else _token(uri[at + len(prefix):])


def branch_worker(head: bytes) -> int | None:
    """The worker mark at the end of the top Via's branch, None when there is none."""
    start, stop = _value_at(head, _VIA)
    if start < 0:
        return None
    via = head[start:stop]
    comma = via.find(b",")
    if comma >= 0:
        via = via[:comma]
    at = via.find(_BRANCH)
    while at >= 0:
        # The parameter's name, then `=` (whitespace allowed around it, RFC 3261 §25.1).
        i = at + len(_BRANCH)
        while i < len(via) and via[i] in _SPACE:
            i += 1
        if i < len(via) and via[i] == _EQUAL:
            break
        at = via.find(_BRANCH, at + 1)
    if at < 0:
        return None
    branch = _token(via[i + 1:].lstrip(b" \t"))
    mark = branch.rfind(_BRANCH_MARK)
    return None if mark < 0 else _hex_number(branch[mark + len(_BRANCH_MARK):])


def route_worker(head: bytes, ruri: bytes) -> int | None:
    """The worker mark of our Record-Route as a request brings it back: in its top Route,
    or in its Request-URI (a strict router puts our URI there)."""
    start, stop = _value_at(head, _ROUTE)
    if start >= 0:
        route = head[start:stop]
        close = route.find(b">")
        mark = _uri_param(route if close < 0 else route[:close], _ROUTE_MARK)
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


def _weight(key: int, worker: int) -> int:
    """A worker's score for a key: the key and the worker mixed (MurmurHash3's finalizer,
    a bijection in which every input bit moves half of the output bits)."""
    k = key ^ ((worker * _GOLDEN) & _MASK)
    k ^= k >> 16
    k = (k * 0x85EBCA6B) & _MASK
    k ^= k >> 13
    k = (k * 0xC2B2AE35) & _MASK
    return k ^ (k >> 16)


def hashed_worker(call_id: bytes, members: Sequence[int]) -> int:
    """The worker a Call-ID belongs to among `members`: the same answer on every worker,
    for every message of the call.

    Rendezvous hashing (the member with the highest score for the key), not a modulo: when
    a worker joins, only the Call-IDs it now wins move (one in N+1), and when one leaves,
    only its own; with a modulo nearly every Call-ID would change worker, and with it the
    CANCEL or ACK of every INVITE in flight at that moment."""
    key = zlib.crc32(call_id)
    best, top = members[0], -1  # every score is at least 0
    for worker in members:
        score = _weight(key, worker)
        if score > top or (score == top and worker < best):
            best, top = worker, score
    return best


class Ownership:
    """The workers of one node and the rules above; `owner(data)` says whose a message is.

    `members` are the worker numbers that share this node's address (sorted); `update`
    replaces them when workers join or leave. A message's owner is None when no worker of
    the node can be named for it (then the worker that has it handles it).
    """

    __slots__ = ("_match", "members")

    def __init__(self, members: Sequence[int], match_param: str = "osid") -> None:
        self.members: tuple[int, ...] = tuple(sorted(set(members)))
        self._match = f";{match_param.lower()}=".encode() if match_param else b""

    def update(self, members: Sequence[int]) -> None:
        self.members = tuple(sorted(set(members)))

    def owner(self, data: bytes) -> int | None:
        members = self.members
        if not members:
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")
        # Header names, URI parameters and our marks compare in lower case; the offsets are
        # those of `data` (a Call-ID is read from there, as written).
        head = (data if end < 0 else data[:end + 1]).lower()
        if head.startswith(b"sip/"):
            marked = branch_worker(head)
        else:
            line_end = head.find(b"\n")
            first = head if line_end < 0 else head[:line_end]
            ruri = first[first.find(b" ") + 1:first.rfind(b" ")]
            marked = route_worker(head, ruri)
            if marked is None and self._match:
                # A new request: one whose dialog is not here is routed as any other.
                transferred = transferred_worker(ruri, self._match)
                if transferred is not None and transferred in members:
                    return transferred
        if marked is not None:
            return marked if marked in members else None
        start, stop = _value_at(head, _CALL_ID)
        if start < 0:
            return None
        call_id = data[start:stop].strip()
        return hashed_worker(call_id, members) if call_id else None
