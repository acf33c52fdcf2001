"""Call operations as values: a transfer, a hold or unhold, the end of a call.

Each is made and checked once, by the function of its name here, where the request enters (the
MI, the Python API, a routing script); the value then travels unchanged to the worker that owns
the dialog — in the same process, or packed and unpacked by a cluster runtime — and callops
carries it out. `Refused` is how the core says no: a status and a reason of its own (the
numbers OpenSIPS' callops answers with), never a JSON-RPC code; each edge (the MI, the Python
API) maps it in one table.

Each carries an optional `operation_id`: the id a front end that tracks its operations (the REST
API) gave it; callops copies it into the events the operation causes, so they can be told from
another front end's. None for an untracked one (the MI's).

Knows nothing of dialogs: whether the call exists, is confirmed or has an operation pending is
for callops to say, on the worker that owns it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from .errors import LocalProtocolError
from .headers import header_key
from .refer import check_text, parse_destination, sendable

LegName = Literal["caller", "callee"]
Headers = tuple[tuple[str, str], ...]

# The statuses callops refuses with (OpenSIPS' callops module answers with the same).
BAD_INPUT: Final = 400
NOT_FOUND: Final = 404
NOT_READY: Final = 410
BAD_LEG: Final = 420
NOTHING_TO_DO: Final = 480
PENDING: Final = 491
NOT_SENT: Final = 500


class Refused(Exception):
    """An operation the core will not carry out: `status` and `reason`; `detail` says more
    (for bad input: `field: why`), `field` names the input at fault (bad input only)."""

    def __init__(self, status: int, reason: str, detail: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(f"{status} {reason}" + (f" ({detail})" if detail else ""))
        self.status = status
        self.reason = reason
        self.detail = detail
        self.field = field

    @classmethod
    def bad_input(cls, field: str, why: str) -> Refused:
        return cls(BAD_INPUT, "Bad input", f"{field}: {why}", field)

    def __reduce__(self) -> tuple[type[Refused], tuple[int, str, str | None, str | None]]:
        # From the fields, not `args`: the error may cross processes (ray runtime).
        return (type(self), (self.status, self.reason, self.detail, self.field))


@dataclass(frozen=True, slots=True)
class BlindTransfer:
    """REFER `leg` of the call `call_id` to `destination` (RFC 3515)."""

    call_id: str
    leg: LegName
    destination: str
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class AttendedTransfer:
    """REFER `leg` of `call_id` to a party of the call `transfer_callid`, with Replaces
    (RFC 3891): that call's `transfer_leg`, or — for a call this proxy may not track — the
    party its `from_tag`, `to_tag` and `destination` name."""

    call_id: str
    leg: LegName
    transfer_callid: str
    transfer_leg: LegName | None
    destination: str | None
    from_tag: str | None
    to_tag: str | None
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class HoldChange:
    """Put `leg` (None: both) of `call_id` on hold, or take it off; the extra headers of the
    re-INVITE to the caller and to the callee."""

    call_id: str
    hold: bool
    leg: LegName | None
    caller_headers: Headers
    callee_headers: Headers
    operation_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndCall:
    """BYE both parties of the dialog `key` (a dialog id or a Call-ID)."""

    key: str
    extra_headers: Headers
    operation_id: str | None = None


Operation = BlindTransfer | AttendedTransfer | HoldChange | EndCall


# -- making them (the only place they are checked) ------------------------------------------


def transfer(call_id: object, leg: object, destination: object = None,
             transfer_callid: object = None, transfer_leg: object = None,
             transfer_fromtag: object = None, transfer_totag: object = None,
             *, operation_id: str | None = None) -> BlindTransfer | AttendedTransfer:
    """The `callops:transfer` operation: blind without `transfer_callid`, attended with it.
    Arguments are `object`: they come from a management request or a Python caller."""
    call_id = _text("callid", call_id)
    _operation_id(operation_id)
    a_leg = _leg("leg", leg)
    dest = _opt_text("destination", destination)
    if dest is not None:
        _destination(dest)
    if transfer_callid is None:
        if dest is None:
            raise Refused.bad_input("destination", "missing")
        return BlindTransfer(call_id, a_leg, dest, operation_id)
    other = _text("transfer_callid", transfer_callid)
    _header_text("transfer_callid", other)
    from_tag = _opt_text("transfer_fromtag", transfer_fromtag)
    to_tag = _opt_text("transfer_totag", transfer_totag)
    if transfer_leg is not None:
        return AttendedTransfer(call_id, a_leg, other, _leg("transfer_leg", transfer_leg), dest,
                                None, None, operation_id)
    if not from_tag or not to_tag or not dest:
        raise Refused.bad_input(
            "transfer_destination",
            "transfer_fromtag, transfer_totag and transfer_destination go together")
    _header_text("transfer_fromtag", from_tag)
    _header_text("transfer_totag", to_tag)
    return AttendedTransfer(call_id, a_leg, other, None, dest, from_tag, to_tag, operation_id)


def hold(call_id: object, leg: object = None, headers: object = None, *,
         on: bool = True, operation_id: str | None = None) -> HoldChange:
    """`callops:hold` (`on`) or `callops:unhold`. `leg`: caller, callee, both or None (both).
    `headers`: one text for both re-INVITEs, or [caller's, callee's]; each `Name: value`
    lines, literal `\\r\\n` accepted as a line break (spec §7.1)."""
    call_id = _text("callid", call_id)
    _operation_id(operation_id)
    if not (leg is None or isinstance(leg, str)) or leg not in _HOLD_LEGS:
        raise Refused(BAD_LEG, "Bad leg")
    caller, callee = _hold_headers(headers)
    return HoldChange(call_id, on, _HOLD_LEGS[leg], caller, callee, operation_id)


def end_call(key: object, extra_headers: object = None, *,
             operation_id: str | None = None) -> EndCall:
    """`dialog:end_dlg`: `extra_headers` are `Name: value` lines (CRLF or LF)."""
    key = _text("dialog_id", key)
    _operation_id(operation_id)
    text = _opt_text("extra_hdrs", extra_headers)
    out: list[tuple[str, str]] = []
    for line in (text or "").replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _token(name):
            raise Refused.bad_input("extra_hdrs", f"bad header line {line!r}")
        if "\r" in value:
            raise Refused.bad_input("extra_hdrs", "CR inside a header value")
        out.append((name, value.strip()))
    return EndCall(key, tuple(out), operation_id)


# -- checks ---------------------------------------------------------------------------------

_HOLD_LEGS: Final[dict[str | None, LegName | None]] = {
    None: None, "both": None, "caller": "caller", "callee": "callee"}
_TOKEN_CHARS: Final = frozenset("-._!%*+`'~")
# What the proxy writes itself in a request it originates, or what would change how the body
# is read: not for `headers` to set.
_PROXY_OWNED_HEADERS: Final = frozenset({
    "via", "call-id", "cseq", "from", "to", "content-length", "content-type",
    "content-encoding", "contact", "route", "record-route", "max-forwards",
})


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise Refused.bad_input(name, "expected a string")
    return value


def _opt_text(name: str, value: object) -> str | None:
    return None if value is None else _text(name, value)


def _operation_id(value: str | None) -> None:
    # It travels in event parameters and webhook bodies: a short token, nothing to escape.
    if value is not None and not (0 < len(value) <= 64 and _token(value)):
        raise Refused.bad_input("operation_id", "1 to 64 token characters")


def _leg(name: str, value: object) -> LegName:
    if value == "caller":
        return "caller"
    if value == "callee":
        return "callee"
    raise Refused.bad_input(name, f"must be caller or callee, not {value!r}")


def _destination(value: str) -> None:
    try:
        parse_destination(value)
    except LocalProtocolError as exc:
        raise Refused.bad_input("destination", str(exc)) from None


def _header_text(name: str, value: str) -> None:
    try:
        check_text(value, name)
    except LocalProtocolError as exc:
        raise Refused.bad_input(name, str(exc)) from None


def _token(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in _TOKEN_CHARS) for c in name)


def _hold_headers(headers: object) -> tuple[Headers, Headers]:
    if headers is None:
        return (), ()
    if isinstance(headers, str):
        both = _header_lines(headers)
        return both, both
    if not isinstance(headers, Iterable):
        raise Refused.bad_input("headers", "expected a string or a list of strings")
    items = list(headers)
    if len(items) > 2:
        raise Refused.bad_input("headers", "at most two entries: caller, callee")
    caller = _header_lines(items[0]) if items else ()
    callee = _header_lines(items[1]) if len(items) > 1 else ()
    return caller, callee


def _header_lines(text: object) -> Headers:
    if not isinstance(text, str):
        raise Refused.bad_input("headers", "must be a string")
    text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n")
    out: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if (not colon or not _token(name)
                or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value)
                or not sendable(value)):
            raise Refused.bad_input("headers", f"not a header line: {line!r}")
        # By key, so the compact forms (`l:`, `i:`, `v:` ...) cannot sneak past either: a
        # second Content-Length would let the rest of the body be read as another message.
        if header_key(name) in _PROXY_OWNED_HEADERS:
            raise Refused.bad_input("headers", f"{name} cannot be set")
        out.append((name, value.strip()))
    return tuple(out)
