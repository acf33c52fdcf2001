"""Call operations from the proxy side: blind and attended transfer, hold and unhold.

The proxy never becomes a B2BUA. It impersonates the other party of a leg and sends that leg
an in-dialog REFER or re-INVITE built from dialog state (OpenSIPS callops, spec §0), then:
- links the new call a REFER causes back to the old one (by the match parameter in its
  Request-URI, by Call-ID, by `Replaces`, or by the script in manual mode);
- answers the NOTIFYs (Event: refer) of the subscription its REFER created, which the other
  party knows nothing of;
- acknowledges the answers to its own re-INVITEs and retries them on glare (RFC 3261 §14.1).

Reports every step as an event value (`sip/events.py`: transfer started, linked, notified,
ended; hold started, answered) in the proxy's event list.
Where the reference module misbehaves (spec §10), this follows its documentation instead
(DESIGN.md §4). Operations arrive as the values of `sip/operations.py`, checked where they
were made; what this module refuses is a `Refused` with the OpenSIPS status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import unquote

from .dialog import Dialog, DialogState, DialogTable, Leg, worker_of
from .errors import LocalProtocolError, ParseError
from .events import (
    HoldAnswered,
    HoldStarted,
    TransferEnded,
    TransferLinked,
    TransferNotified,
    TransferStarted,
)
from .message import Request
from .operations import (
    NOT_FOUND,
    NOT_READY,
    NOT_SENT,
    NOTHING_TO_DO,
    PENDING,
    AttendedTransfer,
    BlindTransfer,
    EndCall,
    Headers,
    HoldChange,
    LegName,
    Operation,
    Refused,
)
from .operations import hold as hold_change
from .operations import transfer as transfer_operation
from .proxy import CallHooks, Event, FinalCallback, NewCallLink, ProxyConfig, Reply
from .refer import (
    Replaces,
    attended_refer_to,
    blind_refer_to,
    check_text,
    parse_destination,
    parse_replaces,
    sipfrag_status,
)
from .sdp import origin_version, set_direction, with_origin_version
from .states import (
    SUBSCRIPTION,
    TRANSFER,
    HoldEvent,
    SubscriptionEvent,
    SubscriptionState,
    TransferEvent,
    TransferState,
    transition,
)
from .timers import Timer, TimerQueue
from .uri import SipUri

MODES = ("param", "manual", "callid")
LEGS = ("caller", "callee")
# Hold direction bits (spec §7.2): what the leg must stop doing.
SEND_OFF = 4
RECV_OFF = 8
_HOLD_MASKS: dict[str | None, tuple[int, int]] = {
    None: (SEND_OFF | RECV_OFF, SEND_OFF | RECV_OFF),
    "caller": (RECV_OFF, SEND_OFF),
    "callee": (SEND_OFF, RECV_OFF),
}
# A transferee that accepted the REFER but never places the new call (it vanished, or its
# INVITE never reaches us) fails the transfer after this long, so the dialog is not blocked.
NEW_CALL_TIMEOUT = 64.0
# After a successful transfer, end the old call once the transferee's final NOTIFY came,
# or after this long if it never does.
END_OLD_CALL_GRACE = 2.0


@dataclass(slots=True)
class DialogOps:
    """Transfer state of one dialog: where its transfer is (`states.TRANSFER`), the
    subscription its REFER created (`states.SUBSCRIPTION`), and the values they carry. The
    hold state is media state of each leg and lives on the `Leg`."""

    # A busy transfer (one whose state allows no START) makes a second one wait: a dialog
    # may be transferred again once it is over (spec §10.1 fixed).
    state: TransferState = TransferState.IDLE
    subscription: SubscriptionState = SubscriptionState.NONE
    leg: str = ""  # the leg of the running transfer
    last_leg: str = ""  # the leg of the latest transfer, for NOTIFYs that come after its end
    transfer_callid: str = ""
    destination: str = ""
    notify_leg: Leg | None = None  # the leg whose refer NOTIFYs we answer
    # The Replaces (call_id, to_tag, from_tag) an attended REFER asked for, when the replaced
    # call is not one of ours: the new call is then linked by this instead.
    replaces: tuple[str, str, str] | None = None
    end_timer: Timer | None = None
    guard_timer: Timer | None = None  # gives up on a transfer whose new call never comes
    operation_id: str | None = None  # of the latest transfer: its events carry it

    @property
    def busy(self) -> bool:
        return TransferEvent.START not in TRANSFER[self.state]

    @property
    def transfer_leg(self) -> str:
        """The leg of the running transfer; "" when none runs."""
        return self.leg if self.busy else ""

    def after(self, event: TransferEvent) -> TransferState:
        """The state `event` moves the transfer to (LocalProtocolError if it may not)."""
        return transition("transfer", TRANSFER, self.state, event)

    def subscription_after(self, event: SubscriptionEvent) -> SubscriptionState:
        return transition("subscription", SUBSCRIPTION, self.subscription, event)


_IDLE = DialogOps()  # read only: what a dialog without call operations looks like


def leg_name(dialog: Dialog, leg: Leg) -> str:
    return "caller" if leg is dialog.caller else "callee"


class ProxyPort(Protocol):
    """What call operations use of the proxy core below them (`proxy.Proxy` is one): its
    dialogs, timers and event list, and in-dialog requests sent as one party to the other."""

    config: ProxyConfig
    dialogs: DialogTable
    timers: TimerQueue
    events: list[Event]
    callops: CallHooks

    def send_in_dialog(self, dialog: Dialog, target: Leg, peer: Leg, method: str,
                       headers: Iterable[tuple[str, str]], body: bytes,
                       on_final: FinalCallback | None, now: float) -> bool: ...

    def end_dialog(self, key: str, now: float, extra_headers: Iterable[tuple[str, str]] = (),
                   reason: str = "terminated") -> bool: ...

    def random_fraction(self) -> float: ...


class RemoteDialogs(Protocol):
    """How a cluster runtime reaches dialogs that other workers own (issue 5).

    `key` names the old dialog as the new call found it: `id:<dialog id>`,
    `callid:<Call-ID>`, or `replaces:<Call-ID>;<to-tag>;<from-tag>` for an INVITE with
    Replaces. The runtime delivers the calls to the owner's `CallOps.remote_link` /
    `remote_answer`; they need not arrive before the call goes on."""

    def link(self, key: str, new_callid: str, destination: str) -> None: ...

    def answer(self, key: str, new_callid: str, destination: str, status: int, reason: str,
               ok: bool) -> None: ...


class _RemoteLink:
    """A new call linked to a dialog on another worker: its answer goes there."""

    __slots__ = ("destination", "key", "new_callid", "remote")

    def __init__(self, remote: RemoteDialogs, key: str, new_callid: str,
                 destination: str) -> None:
        self.remote = remote
        self.key = key
        self.new_callid = new_callid
        self.destination = destination

    def answered(self, status: int, reason: str, local: bool, now: float) -> None:
        ok = status < 300 and not local
        self.remote.answer(self.key, self.new_callid, self.destination, status, reason, ok)


class _Link:
    """A new call linked to an old dialog: its final answer decides ok / fail."""

    __slots__ = ("callops", "destination", "dialog", "new_callid")

    def __init__(self, callops: CallOps, dialog: Dialog, new_callid: str,
                 destination: str) -> None:
        self.callops = callops
        self.dialog = dialog
        self.new_callid = new_callid
        self.destination = destination

    def answered(self, status: int, reason: str, local: bool, now: float) -> None:
        """Spec §4.4: the new call's final answer ends the transfer."""
        ok = status < 300 and not local
        self.callops.conclude(self.dialog, self.new_callid, self.destination, status, reason,
                              ok, now)


class CallOps:
    """The call operations of one proxy core, attached on top of it: the proxy calls its
    `CallHooks` methods; the driver and the management side call the operations."""

    def __init__(self, proxy: ProxyPort, mode: str | None = None, match_param: str | None = None,
                 end_old_call: bool | None = None) -> None:
        config = proxy.config
        mode = config.callops_mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"unknown callops mode {mode!r}")
        self.proxy = proxy
        self.mode = mode
        self.match_param = config.match_param if match_param is None else match_param
        self.end_old_call = config.end_old_call if end_old_call is None else end_old_call
        # Replaced Call-ID -> Call-ID of the dialog whose attended REFER names it, for replaced
        # calls the proxy does not track.
        self._awaiting_replaces: dict[str, str] = {}
        # Set by a cluster runtime; None in one process, where every dialog is local.
        self.remote: RemoteDialogs | None = None
        # Dialog id -> its transfer state, from the first operation until the dialog leaves
        # the table.
        self._ops: dict[str, DialogOps] = {}
        proxy.dialogs.on_remove.append(self._forget)
        proxy.callops = self

    def _forget(self, dialog: Dialog) -> None:
        self._ops.pop(dialog.id, None)

    def _peek(self, dialog: Dialog) -> DialogOps:
        """The transfer state of `dialog` to read (a shared idle one when it has none)."""
        return self._ops.get(dialog.id, _IDLE)

    def transfer_in_flight(self, dialog: Dialog) -> tuple[str, str, str] | None:
        """(leg, transfer Call-ID, destination) of the transfer `dialog` has under way."""
        ops = self._ops.get(dialog.id)
        if ops is None or not ops.transfer_leg:
            return None
        return ops.transfer_leg, ops.transfer_callid, ops.destination

    def ops_of(self, dialog: Dialog) -> DialogOps:
        ops = self._ops.get(dialog.id)
        if ops is None:
            ops = self._ops[dialog.id] = DialogOps()
        return ops

    # -- events -------------------------------------------------------------------------------

    def _transfer_event(self, dialog: Dialog, state: str, status: str = "",
                        destination: str | None = None, transfer_callid: str | None = None,
                        leg: str | None = None) -> None:
        """Report a step of the transfer of `dialog`: `state` is `start` (the REFER went
        out), `linked`, `notify`, `ok` or `fail`; what is not given comes from its state."""
        ops = self.ops_of(dialog)
        call_id = dialog.call_id
        leg = leg if leg is not None else (ops.transfer_leg or ops.last_leg or "unknown")
        new_call = ops.transfer_callid if transfer_callid is None else transfer_callid
        destination = ops.destination if destination is None else destination
        op_id = ops.operation_id
        if state == "start":
            event: TransferStarted | TransferLinked | TransferNotified | TransferEnded = (
                TransferStarted(call_id, leg, new_call, destination, op_id))
        elif state == "linked":
            event = TransferLinked(call_id, leg, new_call, destination, op_id)
        elif state == "notify":
            event = TransferNotified(call_id, leg, new_call, status, op_id)
        else:
            event = TransferEnded(call_id, leg, new_call, destination, state == "ok", status,
                                  op_id)
        self.proxy.events.append(event)

    def _hold_event(self, dialog: Dialog, leg: str, action: str, state: str,
                    operation_id: str | None, status: str = "") -> None:
        """`state`: `start` (the re-INVITE went out), `ok` or `fail` (`status`: the answer's
        status line, "" when none came)."""
        self.proxy.events.append(
            HoldStarted(dialog.call_id, leg, action, operation_id) if state == "start"
            else HoldAnswered(dialog.call_id, leg, action, state == "ok", status,
                              operation_id))

    # -- operations ---------------------------------------------------------------------------

    def dialog_of(self, op: Operation) -> Dialog:
        """The live dialog `op` acts on: by Call-ID, or (to end a call) by dialog id or
        Call-ID; `Refused` 404 when there is none."""
        dialogs = self.proxy.dialogs
        dialog = dialogs.find(op.key) if isinstance(op, EndCall) else (
            dialogs.by_call_id(op.call_id))
        if dialog is None or not dialog.active:
            raise Refused(NOT_FOUND, "Dialog not found")
        return dialog

    def run(self, op: Operation, now: float) -> None:
        """Carry out `op` on the live dialog it names."""
        self.apply(self.dialog_of(op), op, now)

    def apply(self, dialog: Dialog, op: Operation, now: float) -> None:
        """Carry out `op` on `dialog` (the live one it names); raises `Refused`."""
        if isinstance(op, BlindTransfer):
            self._blind_transfer(dialog, op, now)
        elif isinstance(op, AttendedTransfer):
            self._attended_transfer(dialog, op, now)
        elif isinstance(op, HoldChange):
            self._change_hold(dialog, op, now)
        else:
            self.proxy.end_dialog(dialog.id, now, op.extra_headers)

    def transfer(self, call_id: str, leg: str, destination: str, now: float) -> None:
        """Blind transfer (`operations.transfer`, then `run`)."""
        self.run(transfer_operation(call_id, leg, destination), now)

    def attended_transfer(self, call_id: str, leg: str, transfer_callid: str,
                          transfer_leg: str | None, destination: str | None,
                          from_tag: str | None, to_tag: str | None, now: float) -> None:
        """Attended transfer (`operations.transfer`, then `run`)."""
        self.run(transfer_operation(call_id, leg, destination, transfer_callid, transfer_leg,
                                    from_tag, to_tag), now)

    def hold(self, call_id: str, leg: str | None, headers: Iterable[str] | str | None,
             now: float) -> None:
        self.run(hold_change(call_id, leg, headers, on=True), now)

    def unhold(self, call_id: str, leg: str | None, headers: Iterable[str] | str | None,
               now: float) -> None:
        self.run(hold_change(call_id, leg, headers, on=False), now)

    @staticmethod
    def _legs(dialog: Dialog, leg: LegName) -> tuple[Leg, Leg]:
        """(the leg to act on, its peer)."""
        if leg == "caller":
            return dialog.caller, dialog.callee
        return dialog.callee, dialog.caller

    @staticmethod
    def _require_confirmed(dialog: Dialog) -> None:
        if dialog.state not in (DialogState.CONFIRMED, DialogState.CONFIRMED_NA):
            raise Refused(NOT_READY, "Dialog not ready")

    # -- blind transfer ---------------------------------------------------------------------

    def _blind_transfer(self, dialog: Dialog, op: BlindTransfer, now: float) -> None:
        """REFER `op.leg` to `op.destination`. Returns once the REFER is sent."""
        target, peer = self._legs(dialog, op.leg)
        self._require_confirmed(dialog)
        ops = self.ops_of(dialog)
        if ops.busy:
            raise Refused(PENDING, "Request Pending")
        if self.mode == "param":
            value: str | None = dialog.id
        elif self.mode == "callid":
            value = dialog.call_id
        else:
            value = None
        try:
            refer_to = blind_refer_to(op.destination, self.match_param, value)
        except LocalProtocolError as exc:
            raise Refused.bad_input("destination", str(exc)) from None
        self._start_transfer(dialog, ops, target, peer, op.leg, refer_to,
                             str(parse_destination(op.destination)), op.operation_id, now)

    def _start_transfer(self, dialog: Dialog, ops: DialogOps, target: Leg, peer: Leg,
                        leg: str, refer_to: str, destination: str, operation_id: str | None,
                        now: float) -> None:
        ops.state = ops.after(TransferEvent.START)
        ops.operation_id = operation_id
        ops.leg = ops.last_leg = leg
        ops.transfer_callid = ""
        ops.destination = destination
        ops.replaces = None
        headers = [("Contact", f"<{peer.contact}>"), ("Refer-To", refer_to)]
        sent = self.proxy.send_in_dialog(
            dialog, target, peer, "REFER", headers, b"",
            lambda status, reason, t: self._refer_answered(dialog, status, reason, t), now)
        if not sent:
            self._transfer_event(dialog, "fail", "")
            ops.state = ops.after(TransferEvent.UNSENT)
            ops.subscription = ops.subscription_after(SubscriptionEvent.UNSENT)
            raise Refused(NOT_SENT, "Server error", "the REFER could not be sent")
        ops.notify_leg = target
        ops.subscription = ops.subscription_after(
            SubscriptionEvent.UNSUBSCRIBED if self.mode == "manual"
            else SubscriptionEvent.SUBSCRIBED)
        self._transfer_event(dialog, "start", "")
        if ops.guard_timer is not None:
            ops.guard_timer.cancel()
        ops.guard_timer = self.proxy.timers.call_at(
            now + NEW_CALL_TIMEOUT, partial(self._new_call_overdue, dialog))

    def _new_call_overdue(self, dialog: Dialog, now: float) -> None:
        ops = self.ops_of(dialog)
        ops.guard_timer = None
        if not dialog.active:
            return  # the transfer ended with its dialog
        new = ops.after(TransferEvent.OVERDUE)
        if new is ops.state:
            return  # absorbed: the transfer ended before its new call was due
        self._transfer_event(dialog, "fail", "408 Request Timeout")
        ops.state = new
        ops.subscription = ops.subscription_after(SubscriptionEvent.GIVEN_UP)

    def _refer_answered(self, dialog: Dialog, status: int, reason: str, now: float) -> None:
        ops = self.ops_of(dialog)
        if status < 300:
            return  # accepted: the NOTIFYs and the new call tell the rest
        new = ops.after(TransferEvent.REFUSED)
        if new is ops.state:
            return  # absorbed: the transfer already ended
        self._transfer_event(dialog, "fail", f"{status} {reason}")
        ops.state = new
        ops.subscription = ops.subscription_after(SubscriptionEvent.GIVEN_UP)
        if ops.guard_timer is not None:
            ops.guard_timer.cancel()
            ops.guard_timer = None

    # -- attended transfer ------------------------------------------------------------------

    def _attended_transfer(self, dialog: Dialog, op: AttendedTransfer, now: float) -> None:
        """REFER `op.leg` of `dialog` to a party of `op.transfer_callid`, with Replaces."""
        other = self.proxy.dialogs.by_call_id(op.transfer_callid)
        if op.transfer_leg is not None:
            if other is None or not other.active:
                raise Refused(NOT_FOUND, "Transfer dialog not found")
            if op.transfer_leg == "callee":
                totag, fromtag = other.callee.tag, other.caller.tag
                default_dest = other.to_uri
            else:
                totag, fromtag = other.caller.tag, other.callee.tag
                default_dest = other.from_uri
            destination = op.destination or default_dest
        else:
            # Tags and destination were given together (`operations.transfer` saw to it).
            totag, fromtag = op.to_tag or "", op.from_tag or ""
            destination = op.destination or ""
            other = other if other is not None and other.active else None
        target, peer = self._legs(dialog, op.leg)
        self._require_confirmed(dialog)
        ops = self.ops_of(dialog)
        if ops.busy:
            raise Refused(PENDING, "Request Pending")
        try:
            refer_to = attended_refer_to(destination, op.transfer_callid, totag, fromtag)
        except LocalProtocolError as exc:
            raise Refused.bad_input("destination", str(exc)) from None
        if other is not None:
            self.ops_of(other).transfer_callid = dialog.call_id
        self._start_transfer(dialog, ops, target, peer, op.leg, refer_to,
                             str(parse_destination(destination)), op.operation_id, now)
        if other is None:
            ops.replaces = (op.transfer_callid, totag, fromtag)
            self._await_replaces(op.transfer_callid, dialog)

    def _await_replaces(self, replaced_callid: str, dialog: Dialog) -> None:
        for key, call_id in list(self._awaiting_replaces.items()):
            d = self.proxy.dialogs.by_call_id(call_id)
            if d is None or not d.active or self._peek(d).replaces is None:
                del self._awaiting_replaces[key]
        self._awaiting_replaces[replaced_callid] = dialog.call_id

    # -- the new call ------------------------------------------------------------------------

    def on_initial_invite(self, req: Request) -> list[NewCallLink]:
        """Link a new INVITE to the dialog(s) it transfers (spec §4), before any retargeting
        or relaying: the match parameter is taken out of the Request-URI here."""
        links: list[NewCallLink] = []
        replaces = req.get("replaces")
        if replaces is not None and self._link_attended(req, replaces, links):
            return links
        if self.mode == "manual":
            return links
        ruri = req.ruri
        if not isinstance(ruri, SipUri):
            return links
        value = ruri.params.get(self.match_param)
        if not value:
            return links
        if self.mode == "param":
            old = self.proxy.dialogs.by_id(value)
            key = f"id:{value}"
            elsewhere = worker_of(value) not in (None, self.proxy.dialogs.worker_id)
        else:
            old = self.proxy.dialogs.by_call_id(unquote(value))
            key = f"callid:{unquote(value)}"
            elsewhere = True  # a Call-ID does not say which worker has it
        local = old is not None and old.active and old.call_id != req.call_id
        if not local and (self.remote is None or not elsewhere):
            return links
        stripped = ruri.copy()
        del stripped.params[self.match_param]
        req.uri = str(stripped)
        if old is not None and local:
            self._link(old, req.call_id, req.uri, links)
        elif self.remote is not None:
            self.remote.link(key, req.call_id, req.uri)
            links.append(_RemoteLink(self.remote, key, req.call_id, req.uri))
        return links

    def blind_replace(self, req: Request, links: list[NewCallLink], call_id: str,
                      leg: str | None) -> bool:
        """The script's `call_blind_replace(callid[, leg])` (manual mode, spec §6). Finds
        ended dialogs too, while they are still kept, as the reference does."""
        old = self.proxy.dialogs.by_call_id(call_id)
        if old is None or old.call_id == req.call_id:
            return False
        if leg is not None:
            check_text(leg, "leg")
            self.ops_of(old).last_leg = leg
        self._link(old, req.call_id, req.uri, links, claim=leg or "")
        return True

    def _link(self, old: Dialog, new_callid: str, destination: str,
              links: list[NewCallLink], claim: str = "") -> None:
        """`new_callid` is the new call of `old`'s transfer; with `claim` (a leg of `old`), a
        new call that takes `old` over, which is busy until that call is answered."""
        ops = self.ops_of(old)
        if claim:
            ops.state = ops.after(TransferEvent.CLAIM)
            ops.leg = claim
        else:
            ops.state = ops.after(TransferEvent.LINK)
        ops.transfer_callid = new_callid
        if ops.guard_timer is not None:
            ops.guard_timer.cancel()
            ops.guard_timer = None
        self._transfer_event(old, "linked", "", destination=destination)
        links.append(_Link(self, old, new_callid, destination))

    def _link_attended(self, req: Request, value: str, links: list[NewCallLink]) -> bool:
        try:
            rep = parse_replaces(value)
        except ParseError:
            return False
        replaced = self.proxy.dialogs.by_call_id(rep.call_id)
        if replaced is None or not replaced.active:
            if self._link_untracked(req, rep, links):
                return True
            if self.remote is None:
                return False
            # The replaced call (and maybe the transferred one) lives on another worker.
            key = f"replaces:{rep.call_id};{rep.to_tag};{rep.from_tag}"
            self.remote.link(key, req.call_id, req.uri)
            links.append(_RemoteLink(self.remote, key, req.call_id, req.uri))
            return True
        if rep.from_tag == replaced.caller.tag and rep.to_tag == replaced.callee.tag:
            replaced_leg = "callee"
        elif rep.from_tag == replaced.callee.tag and rep.to_tag == replaced.caller.tag:
            replaced_leg = "caller"
        else:
            return False
        r_ops = self.ops_of(replaced)
        initiator_id = r_ops.transfer_callid
        initiator = self.proxy.dialogs.by_call_id(initiator_id) if initiator_id else None
        if initiator is not None and initiator.active and initiator is not replaced:
            self._link(initiator, req.call_id, req.uri, links)
        elif initiator_id and initiator is None and self.remote is not None:
            key = f"callid:{initiator_id}"
            self.remote.link(key, req.call_id, req.uri)
            links.append(_RemoteLink(self.remote, key, req.call_id, req.uri))
        self._link(replaced, req.call_id, req.uri, links, claim=replaced_leg)
        return True

    # -- dialogs of this worker linked by a new call on another one ---------------------------

    def replaces_for(self, call_id: str, leg: str) -> tuple[str, str, str] | None:
        """(to-tag, from-tag, default destination) for an attended transfer whose second call
        is `call_id` here and whose target is its `leg` (spec §3.2): what a cluster runtime
        fetches from this worker to run the transfer on the worker of the first call."""
        dialog = self.proxy.dialogs.by_call_id(call_id)
        if dialog is None or not dialog.active:
            return None
        if leg == "callee":
            return dialog.callee.tag, dialog.caller.tag, dialog.to_uri
        if leg == "caller":
            return dialog.caller.tag, dialog.callee.tag, dialog.from_uri
        return None

    def expect_replacing(self, call_id: str, initiator_callid: str) -> bool:
        """Remember that the call `initiator_callid` (on another worker) is being transferred
        onto the call `call_id` here, so the replacing INVITE links both."""
        dialog = self.proxy.dialogs.by_call_id(call_id)
        if dialog is None or not dialog.active:
            return False
        self.ops_of(dialog).transfer_callid = initiator_callid
        return True

    def _resolve_remote(self, key: str) -> list[tuple[Dialog, str | None]]:
        """The local dialogs a remote key names, each with the leg to record (or None)."""
        kind, _, value = key.partition(":")
        if kind == "id":
            d = self.proxy.dialogs.by_id(value)
            return [(d, None)] if d is not None and d.active else []
        if kind == "callid":
            d = self.proxy.dialogs.by_call_id(value)
            return [(d, None)] if d is not None and d.active else []
        if kind != "replaces":
            return []
        call_id, to_tag, from_tag = [*value.split(";"), "", ""][:3]
        found: list[tuple[Dialog, str | None]] = []
        replaced = self.proxy.dialogs.by_call_id(call_id)
        if replaced is not None and replaced.active:
            if (from_tag, to_tag) == (replaced.caller.tag, replaced.callee.tag):
                found.append((replaced, "callee"))
            elif (from_tag, to_tag) == (replaced.callee.tag, replaced.caller.tag):
                found.append((replaced, "caller"))
            initiator = self.proxy.dialogs.by_call_id(self._peek(replaced).transfer_callid)
            if found and initiator is not None and initiator.active:
                found.insert(0, (initiator, None))
        waiting = self.proxy.dialogs.by_call_id(self._awaiting_replaces.get(call_id, ""))
        if waiting is not None and waiting.active and self._peek(waiting).replaces == (
                call_id, to_tag, from_tag):
            del self._awaiting_replaces[call_id]
            self.ops_of(waiting).replaces = None
            found.insert(0, (waiting, None))
        return found

    def remote_link(self, key: str, new_callid: str, destination: str) -> bool:
        """Another worker saw the new call for a dialog of ours (its `RemoteDialogs.link`)."""
        found = self._resolve_remote(key)
        for dialog, leg in found:
            if leg is not None:
                self.ops_of(dialog).last_leg = leg
            self._link(dialog, new_callid, destination, [], claim=leg or "")
        return bool(found)

    def remote_answer(self, key: str, new_callid: str, destination: str, status: int,
                      reason: str, ok: bool, now: float) -> None:
        """The new call another worker relayed got its final answer."""
        kind, _, value = key.partition(":")
        dialogs: list[Dialog] = []
        if kind == "replaces":
            call_id = value.split(";", 1)[0]
            for candidate in (self.proxy.dialogs.by_call_id(call_id), *(
                    d for d in self.proxy.dialogs if self._peek(d).transfer_callid == new_callid)):
                if candidate is not None and candidate not in dialogs:
                    dialogs.append(candidate)
        else:
            dialogs = [d for d, _ in self._resolve_remote(key)]
        for dialog in dialogs:
            if dialog.active and self._peek(dialog).transfer_callid == new_callid:
                self.conclude(dialog, new_callid, destination, status, reason, ok, now)

    def _link_untracked(self, req: Request, rep: Replaces, links: list[NewCallLink]) -> bool:
        """An INVITE replacing a call we do not track, asked for by our own attended REFER
        (the transfer_fromtag / transfer_totag recipe): link the transferred dialog."""
        call_id = self._awaiting_replaces.get(rep.call_id)
        initiator = self.proxy.dialogs.by_call_id(call_id) if call_id else None
        if initiator is None or not initiator.active or initiator.call_id == req.call_id:
            return False
        ops = self.ops_of(initiator)
        if ops.replaces != (rep.call_id, rep.to_tag, rep.from_tag):
            return False
        del self._awaiting_replaces[rep.call_id]
        ops.replaces = None
        self._link(initiator, req.call_id, req.uri, links)
        if self.remote is not None:
            # The replaced call is not ours: it may live on another worker of the cluster.
            key = f"replaces:{rep.call_id};{rep.to_tag};{rep.from_tag}"
            self.remote.link(key, req.call_id, req.uri)
            links.append(_RemoteLink(self.remote, key, req.call_id, req.uri))
        return True

    def conclude(self, dialog: Dialog, new_callid: str, destination: str, status: int,
                  reason: str, ok: bool, now: float) -> None:
        ops = self.ops_of(dialog)
        text = f"{status} {reason}".strip()
        self._transfer_event(dialog, "ok" if ok else "fail", text,
                             destination=destination, transfer_callid=new_callid)
        ops.state = ops.after(TransferEvent.ANSWERED if ok else TransferEvent.FAILED)
        if ok and self.end_old_call and dialog.active:
            if ops.subscription is SubscriptionState.TERMINATED:
                # The transferee's last NOTIFY overtook the new call's answer (it can,
                # when the new call went through another worker): nothing to wait for.
                self._end_old(dialog, now)
            else:
                ops.end_timer = self.proxy.timers.call_at(
                    now + END_OLD_CALL_GRACE, partial(self._end_old, dialog))

    def _end_old(self, dialog: Dialog, now: float) -> None:
        ops = self.ops_of(dialog)
        if ops.end_timer is not None:
            ops.end_timer.cancel()
            ops.end_timer = None
        if dialog.active and dialog.state in (DialogState.CONFIRMED, DialogState.CONFIRMED_NA):
            self.proxy.end_dialog(dialog.id, now, reason="transferred")

    # -- NOTIFY (Event: refer) ---------------------------------------------------------------

    def on_in_dialog_request(self, req: Request, dialog: Dialog, sender: Leg,
                             reply: Reply, now: float) -> bool:
        """Answer the NOTIFYs of a subscription our REFER created; True when handled."""
        if req.method != "NOTIFY" or self.mode == "manual":
            return False
        ops = self._ops.get(dialog.id)
        if ops is None or ops.subscription is not SubscriptionState.ACTIVE:
            return False
        if ops.notify_leg is not sender:
            return False
        return self.handle_notify(req, dialog, reply, now)

    def handle_notify(self, req: Request, dialog: Dialog, reply: Reply, now: float) -> bool:
        """Spec §5, with the reference's 480 race replaced by a 200 (the issue's choice)."""
        event = (req.get("event") or "").split(";", 1)[0].strip().lower()
        if event != "refer":
            return False
        ops = self.ops_of(dialog)
        status = sipfrag_status(req.body)
        if status is None:
            reply(400, "Bad Request")
            return True
        self._transfer_event(dialog, "notify", status, destination="")
        reply(200, "OK")
        sub_state = (req.get("subscription-state") or "").split(";", 1)[0].strip().lower()
        if sub_state == "terminated":
            ops.subscription = ops.subscription_after(SubscriptionEvent.FINAL_NOTIFY)
            # The transferee is done with the REFER; its new call, if it came through us, was
            # answered before this. Either way the transfer is over and the dialog may be
            # transferred again, even when the new call never reached us (or lost the match
            # parameter) and so was never linked.
            ops.state = ops.after(TransferEvent.FINAL_NOTIFY)
            if ops.state is TransferState.SUCCEEDED and self.end_old_call:
                self._end_old(dialog, now)
        return True

    # -- hold / unhold ------------------------------------------------------------------------

    def _change_hold(self, dialog: Dialog, op: HoldChange, now: float) -> None:
        if dialog.state is not DialogState.CONFIRMED:
            raise Refused(NOT_READY, "Dialog not ready")
        hold, leg = op.hold, op.leg
        caller_mask, callee_mask = _HOLD_MASKS[leg]
        order = (("caller", dialog.caller, dialog.callee, caller_mask, op.caller_headers),
                 ("callee", dialog.callee, dialog.caller, callee_mask, op.callee_headers))
        if not hold:
            order = order[::-1]
        plans: list[tuple[str, Leg, Leg, int, bytes, int | None, Headers]] = []
        for name, target, peer, mask, hdrs in order:
            if hold:
                new_mask = target.hold_mask | mask
                if target.hold_mask == new_mask:
                    continue
            else:
                new_mask = target.hold_mask & ~mask if leg is not None else 0
                if target.hold_mask == new_mask:
                    continue  # not on hold, or held only in the direction that stays held
            if target.reinvite_pending:
                raise Refused(PENDING, "Request Pending")
            offer = self._offer(target, peer, new_mask)
            if offer is None:
                raise Refused(NOT_SENT, "Server error", f"no usable SDP to offer to the {name}")
            plans.append((name, target, peer, new_mask, *offer, hdrs))
        if not plans:
            raise Refused(NOTHING_TO_DO, "Both dialog legs are on hold" if hold
                          else "No dialog legs on hold")
        action = "hold" if hold else "unhold"
        any_sent = False
        for name, target, peer, new_mask, body, version, hdrs in plans:
            # The version is used up only by an offer that went out (RFC 3264 §8: the next
            # one the leg sees must be exactly one higher).
            sent = self._reinvite(dialog, name, target, peer, new_mask, body, hdrs, action,
                                  op.operation_id, now, 0)
            if sent and version is not None:
                target.sdp_version_sent = version
            any_sent = any_sent or sent
        if not any_sent:
            raise Refused(NOT_SENT, "Server error", "the re-INVITE could not be sent")

    def _offer(self, target: Leg, peer: Leg, mask: int) -> tuple[bytes, int | None] | None:
        """The SDP offered to `target`: what it last received, direction per `mask`, with a
        higher `o=` version than anything it has seen from us (RFC 3264 §8), and that
        version. Changes no state: the caller records the version once the offer is sent."""
        base = peer.sdp
        if base is None:
            return None
        if mask == 0:
            body = base
        else:
            direction = {SEND_OFF | RECV_OFF: "inactive", SEND_OFF: "recvonly",
                         RECV_OFF: "sendonly"}[mask]
            try:
                rewritten = set_direction(base, direction)
            except LocalProtocolError:
                return None
            body = rewritten if rewritten is not None else base
        version = origin_version(body)
        if version is None:
            return body, None
        next_version = max(version, target.sdp_version_sent) + 1
        return with_origin_version(body, next_version), next_version

    def _reinvite(self, dialog: Dialog, name: str, target: Leg, peer: Leg, mask: int,
                  body: bytes, extra: Headers, action: str, operation_id: str | None,
                  now: float, attempt: int) -> bool:
        """Send one hold/unhold offer; False (and a `fail` event) if it could not go."""
        headers = [("Contact", f"<{peer.contact}>"), ("Content-Type", "application/sdp"),
                   *extra]

        base = peer.sdp  # what `body` was built from

        def answered(status: int, reason: str, t: float) -> None:
            if status == 491 and attempt < 3 and dialog.active:
                # Glare (RFC 3261 §14.1): retry after a random wait; 2.1-4 s when we speak
                # for the Call-ID's owner (the caller), 0-2 s otherwise.
                wait = self.proxy.random_fraction() * 2.0
                if peer is dialog.caller:
                    wait = 2.1 + wait * 0.95
                target.hold_event(HoldEvent.GLARE)
                self.proxy.timers.call_at(t + wait, lambda t2: self._retry(
                    dialog, name, target, peer, mask, base, body, extra, action,
                    operation_id, t2, attempt + 1))
                return
            target.hold_event(HoldEvent.ANSWERED)
            ok = status < 300
            if ok:
                target.hold_mask = mask
            self._hold_event(dialog, name, action, "ok" if ok else "fail", operation_id,
                             f"{status} {reason}".strip())

        if attempt == 0:
            self._hold_event(dialog, name, action, "start", operation_id)
        target.hold_event(HoldEvent.OFFER if attempt == 0 else HoldEvent.RETRY)
        if not self.proxy.send_in_dialog(dialog, target, peer, "INVITE", headers, body,
                                         answered, now):
            target.hold_event(HoldEvent.UNSENT)
            self._hold_event(dialog, name, action, "fail", operation_id)
            return False
        return True

    def _retry(self, dialog: Dialog, name: str, target: Leg, peer: Leg, mask: int,
               base: bytes | None, body: bytes, extra: Headers, action: str,
               operation_id: str | None, now: float, attempt: int) -> None:
        if not dialog.active:
            target.hold_event(HoldEvent.ABANDONED)
            self._hold_event(dialog, name, action, "fail", operation_id)
            return
        version: int | None = None
        if peer.sdp != base:
            # The party that made us back off changed its SDP meanwhile: the leg has seen
            # it, so the offer is built again on it, with a newer version (RFC 3264 §8).
            offer = self._offer(target, peer, mask)
            if offer is not None:
                body, version = offer
        # Otherwise the same offer again: the 491 left the leg's session as it was.
        sent = self._reinvite(dialog, name, target, peer, mask, body, extra, action,
                              operation_id, now, attempt)
        if sent and version is not None:
            target.sdp_version_sent = version
