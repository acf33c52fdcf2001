"""What a routing script sees of a request, and what it may decide (OpenSIPS script semantics).

The proxy calls the script's hook once per new request (not for retransmissions, ACKs or
CANCELs, which the transaction layer owns), after Route processing. The hook may leave the
request to be relayed (the default), `reply` to it, `drop` it, or act on the call:
`call_transfer`, `call_blind_replace`, `call_transfer_notify` — the script functions of the
callops module, with its return codes.
"""

from __future__ import annotations

from collections.abc import Callable

from .callops import CallOps
from .errors import LocalProtocolError
from .message import REASONS, Request
from .operations import Refused, transfer
from .proxy import DROPPED as DROPPED
from .proxy import RELAY as RELAY
from .proxy import REPLIED as REPLIED
from .proxy import NewCallLink, Proxy
from .transaction import ServerTransaction
from .wire import Address

# A routing script's function: what it decides goes into the context it is given.
Script = Callable[["RequestContext"], None]


def install_script(proxy: Proxy, callops: CallOps | None, script: Script) -> None:
    """Make `script` the proxy's routing script, with `callops` for its call functions."""

    def hook(request: Request, txn: ServerTransaction, source: Address,
             now: float) -> tuple[str, list[NewCallLink]]:
        context = RequestContext(proxy, callops, request, txn, source, now)
        script(context)
        return context.action, context.links

    proxy.request_hook = hook


class RequestContext:
    """One request in the hands of the routing script."""

    __slots__ = ("_callops", "_now", "_proxy", "_txn", "action", "links", "request", "source")

    def __init__(self, proxy: Proxy, callops: CallOps | None, request: Request,
                 txn: ServerTransaction, source: Address, now: float) -> None:
        self._proxy = proxy
        self._callops = callops
        self._txn = txn
        self._now = now
        self.request = request
        self.source = source
        self.action = RELAY
        self.links: list[NewCallLink] = []  # calls linked by call_blind_replace

    # -- what the request is ---------------------------------------------------------------

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def is_initial(self) -> bool:
        """No To tag: the request starts a dialog or stands alone (OpenSIPS `has_totag()`)."""
        return self.request.to_tag is None

    @property
    def dialog_id(self) -> str | None:
        """The id of the tracked dialog this request belongs to, if any."""
        dialog = self._proxy.dialogs.by_call_id(self.request.call_id)
        return dialog.id if dialog is not None and dialog.active else None

    @property
    def sender_leg(self) -> str | None:
        """`caller` or `callee`: which party of its dialog sent this request."""
        dialog = self._proxy.dialogs.by_call_id(self.request.call_id)
        if dialog is None:
            return None
        legs = dialog.leg_of(self.request.from_tag)
        if legs is None:
            return None
        return "caller" if legs[0] is dialog.caller else "callee"

    def party_address(self, leg: str) -> str:
        """`ip:port` the given party of this request's dialog sends from ("" if unknown)."""
        dialog = self._proxy.dialogs.by_call_id(self.request.call_id)
        party = None if dialog is None else dialog.caller if leg == "caller" else dialog.callee
        address = None if party is None else party.address
        return f"{address.host}:{address.port}" if address is not None else ""

    # -- decisions ---------------------------------------------------------------------------

    def reply(self, status: int, reason: str | None = None) -> None:
        """Answer the request statefully and stop routing it."""
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"bad status {status}")
        if reason is not None and any(c in reason for c in "\r\n"):
            raise LocalProtocolError("CR/LF in a reason phrase")
        self._proxy.respond(self._txn, status, self._now, reason or REASONS.get(status))
        if status >= 200:
            self.action = REPLIED

    def drop(self) -> None:
        """Neither answer nor relay (the sender will retransmit, then give up)."""
        self.action = DROPPED

    # -- callops script functions ------------------------------------------------------------

    def call_transfer(self, leg: str, destination: str) -> int:
        """Blind-transfer `leg` of this request's dialog; 1 on success, -1 otherwise."""
        dialog = self._proxy.dialogs.by_call_id(self.request.call_id)
        if dialog is None or not dialog.active or self._callops is None:
            return -1
        try:
            op = transfer(dialog.call_id, leg.lower(), destination)
            self._callops.apply(dialog, op, self._now)
        except Refused:
            return -1
        return 1

    def call_blind_replace(self, callid: str, leg: str | None = None) -> int:
        """Link this new call to the call `callid` it transfers (manual mode): 1 linked,
        -2 no such call, -1 not an initial INVITE."""
        if self.request.method != "INVITE" or not self.is_initial or self._callops is None:
            return -1
        linked = self._callops.blind_replace(self.request, self.links, callid, leg)
        return 1 if linked else -2

    def call_transfer_notify(self) -> int:
        """Answer a NOTIFY (Event: refer) of this dialog: 0 handled (routing stops),
        -2 not such a NOTIFY, -1 no dialog."""
        if self.request.method != "NOTIFY":
            return -2
        dialog = self._proxy.dialogs.by_call_id(self.request.call_id)
        if dialog is None or self._callops is None:
            return -1
        handled = self._callops.handle_notify(
            self.request, dialog, lambda status, reason: self.reply(status, reason), self._now)
        return 0 if handled else -2
