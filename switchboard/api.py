"""The control-plane contract: what the MI, the CLI and the Python API may ask of a running node.

`ControlApi` is the one interface every front end calls; the runtimes (`cluster/local`,
`cluster/ray`) implement it. Call operations reach it as the values of `sip.operations`, made
and checked once by the front end; `CallOperations` gives the Python API's methods of the same
names (`call_transfer`, ...) on top of `operate`. `CommandError` is how an operation refuses:
it carries a JSON-RPC error code, so the MI can hand it to the client unchanged;
`command_error` is the one table from the core's `Refused` to it. This module knows nothing
about HTTP, JSON-RPC framing or actors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from .sip.operations import (
    BAD_INPUT,
    NOT_SENT,
    Operation,
    Refused,
    end_call,
    hold,
    transfer,
)

if TYPE_CHECKING:
    from .capture import CaptureControl

# JSON-RPC 2.0 core codes, with the messages OpenSIPS uses for them (mi/mi.h).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
SERVER_ERROR: Final = -32000


class CommandError(Exception):
    """A management operation failed in a way the caller should be told about.

    Module errors use SIP-like codes, as OpenSIPS modules do: 404 "Dialog not found",
    420 "Bad leg", 410 "Dialog not ready", 491 "Request Pending", 480 "No dialog legs on hold".
    Bad input uses -32602 "Invalid params" with `data` naming the parameter.
    """

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(f"{code} {message}" + (f" ({data})" if data else ""))
        self.code = code
        self.message = message
        self.data = data

    @classmethod
    def invalid_params(cls, data: str) -> CommandError:
        """-32602 "Invalid params"; `data` says which parameter is wrong and why."""
        return cls(INVALID_PARAMS, "Invalid params", data)

    @classmethod
    def dialog_not_found(cls) -> CommandError:
        """404 "Dialog not found", the answer for an unknown dialog ID or Call-ID."""
        return cls(404, "Dialog not found")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommandError):
            return NotImplemented
        return (self.code, self.message, self.data) == (other.code, other.message, other.data)

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.data))

    def __reduce__(self) -> tuple[type[CommandError], tuple[int, str, str | None]]:
        # Rebuilt from the fields, not from `args` (the formatted text): the error crosses
        # processes when the ray runtime's controller actor raises it to a caller.
        return (type(self), (self.code, self.message, self.data))


# `observer(event, params)`: what `ControlApi.watch` calls for each event (params shared with
# the other watchers: not to be changed); awaiting the `Unwatch` it returns stops it.
EventObserver = Callable[[str, dict[str, Any]], None]
Unwatch = Callable[[], Awaitable[None]]


class ControlApi(Protocol):
    """Operations on a running node. Async methods may cross to other workers."""

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        """Live dialogs as OpenSIPS `dialog:list` objects (`ID`, `state`, `callid`, ...).

        With `callid` (and optionally the caller's `from_tag`) only the matching dialogs;
        an empty list when none matches.
        """
        ...

    async def list_page(self, after: int | None, limit: int, state: int | None = None,
                        from_user: str | None = None, to_user: str | None = None
                        ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of live dialogs as `dialog:list` objects, in dialog-number (`db_id`) order:
        the first `limit` numbered above `after` (from the first when None) in `state` (an
        OpenSIPS state number) whose From and To users are `from_user` and `to_user` (when
        given); and the number to give as `after` for the next page, None after the last.
        A page costs what it shows, not what the node holds."""
        ...

    async def operate(self, op: Operation) -> None:
        """Carry out a call operation (`sip.operations`: transfer, hold or unhold, the end of
        a call) on the worker that owns its dialog. Raises `CommandError`: 404 "Dialog not
        found" when there is no such live dialog, and what `command_error` makes of the rest.
        A transfer returns once the REFER is sent; progress comes as E_CALL_TRANSFER events."""
        ...

    async def statistics(self) -> dict[str, int]:
        """Every statistic, keyed "group:name" (`dialog:active_dialogs`, `tm:UAS_transactions`,
        `core:rcv_requests`), in a stable order."""
        ...

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        """Send `event` to the sink `socket` (`udp:IP:PORT`, `tcp:IP:PORT`) for `expire`
        seconds; 0 removes the subscription. The MI has already checked that the event exists
        and the socket string parses; an implementation may still raise `CommandError`."""
        ...

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        """Call `observer(event, params)` in this process, in the order the node raised them,
        for each of `events` raised from when this returns until the `Unwatch` it returns is
        awaited. Unlike `subscribe_event` it opens no socket another process could write
        to. `observer` must return quickly. Raises `CommandError` for an unknown event."""
        ...

    def capture(self) -> CaptureControl | None:
        """The node's message capture (the console's ladder diagrams): each worker keeps its
        own; None when the node keeps none."""
        ...

    def uptime_seconds(self) -> float:
        """Seconds since the node started."""
        ...

    def started_at(self) -> float:
        """Unix time at which the node started."""
        ...


# The core's refusals as the MI and the Python API give them: the codes and messages of
# OpenSIPS' callops (the same numbers), bad input as JSON-RPC's own error.
_REFUSALS: Final[dict[int, tuple[int, str]]] = {
    BAD_INPUT: (INVALID_PARAMS, "Invalid params"),
    NOT_SENT: (SERVER_ERROR, "Server error"),
}


def command_error(refused: Refused) -> CommandError:
    code, message = _REFUSALS.get(refused.status, (refused.status, refused.reason))
    return CommandError(code, message, refused.detail)


T = TypeVar("T")


def made(make: Callable[..., T], *args: object, **kwargs: object) -> T:
    """`make(*args, **kwargs)` (an operation of `sip.operations`), its refusal a
    `CommandError`."""
    try:
        return make(*args, **kwargs)
    except Refused as exc:
        raise command_error(exc) from None


class CallOperations:
    """The Python API's call operations, each the operation value of the MI command of the
    same name, made (and so checked) here and carried out by `operate`."""

    async def operate(self, op: Operation) -> None:
        raise NotImplementedError

    async def end_dialog(self, dialog_id: str, extra_headers: str | None = None) -> None:
        """End a dialog (BYE both ways when confirmed, CANCEL when early), given its dialog
        id (as in `dialog:list`) or Call-ID; 404 "Dialog not found" when there is none."""
        await self.operate(made(end_call, dialog_id, extra_headers))

    async def call_transfer(
        self,
        callid: str,
        leg: str,
        destination: str | None = None,
        transfer_callid: str | None = None,
        transfer_leg: str | None = None,
        transfer_fromtag: str | None = None,
        transfer_totag: str | None = None,
    ) -> None:
        """REFER `leg` of the call `callid`: blind to `destination`, or attended (with
        `transfer_callid` and `transfer_leg`, or the from/to tags of a call we do not track).
        Returns once the REFER is sent; progress comes as E_CALL_TRANSFER events."""
        await self.operate(made(transfer, callid, leg, destination, transfer_callid,
                                transfer_leg, transfer_fromtag, transfer_totag))

    async def call_hold(self, callid: str, leg: str | None = None,
                        headers: list[str] | str | None = None) -> None:
        """Re-INVITE the leg(s) with the media direction of a hold (spec §7.2)."""
        await self.operate(made(hold, callid, leg, headers, on=True))

    async def call_unhold(self, callid: str, leg: str | None = None,
                          headers: list[str] | str | None = None) -> None:
        """Resume legs put on hold by `call_hold`."""
        await self.operate(made(hold, callid, leg, headers, on=False))



def refusal(error: CommandError) -> Refused:
    """The core's `Refused` behind `error` (the inverse of `command_error`), for an edge that
    maps refusals rather than JSON-RPC codes (the REST API). Bad input gets back the field
    its detail names (`field: why`)."""
    for status, (code, message) in _REFUSALS.items():
        if error.code == code:
            field, colon, _ = (error.data or "").partition(":")
            named = field.strip() if status == BAD_INPUT and colon else None
            return Refused(status, message, error.data, named or None)
    return Refused(error.code, error.message, error.data)
