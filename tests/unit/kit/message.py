"""Reading a parsed message the way the proxy does: every structured value, each of which may
refuse with `ParseError` and nothing else (the property tests and the parser fuzzer)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from switchboard.sip import ParseError, Request
from switchboard.sip.message import Message


def read_every_value(msg: Message, *more: Callable[[], object]) -> None:
    """Read each value a proxy reads from `msg`, then call `more`; a `ParseError` from any
    of them is passed over, anything else escapes."""
    readers: list[Callable[[], object]] = [
        lambda: msg.call_id,
        lambda: msg.cseq,
        lambda: msg.from_,
        lambda: msg.to,
        lambda: msg.from_tag,
        lambda: msg.to_tag,
        lambda: msg.top_via,
        lambda: msg.vias,
        lambda: msg.contacts,
        lambda: msg.addresses("route"),
        lambda: msg.addresses("record-route"),
        lambda: msg.addresses("refer-to"),
        lambda: msg.content_type,
        *more,
    ]
    if isinstance(msg, Request):
        readers += [lambda: msg.ruri, lambda: msg.sip_ruri, lambda: msg.max_forwards]
    for read in readers:
        with contextlib.suppress(ParseError):
            read()
