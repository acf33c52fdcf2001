"""INVITE dialogs as a proxy tracks them, after the OpenSIPS dialog module.

A `Dialog` is created when an initial INVITE is relayed and follows the states
unconfirmed (1) → early (2) → confirmed without ACK (3) → confirmed (4) → deleted (5) of the
table `states.DIALOG`: the answer to the initial INVITE, an ACK, a BYE or the proxy ending
it move it; an input that table does not allow in a state raises `LocalProtocolError`, and a
late one it absorbs leaves the dialog as it is. For each leg it keeps the tag, the remote
target (Contact), the route set toward that leg, the last CSeq the leg sent and the last SDP
the leg sent. Every state change is reported as a `DialogStateChanged` event. The table
finds dialogs by id and by Call-ID.

Owns no transactions and sends nothing: the proxy core feeds it what it relays.

A confirmed dialog can be written out as a snapshot (`Dialog.snapshot`: plain str / int /
bytes / list / dict, ready for msgpack) and rebuilt from one (`Dialog.from_snapshot`), so a
cluster runtime can keep a copy off the worker and bring the dialog back after a crash
(`Proxy.restore_dialog`). Times are stored relative to the `now` of the snapshot, as the
clocks of two processes (or nodes) do not agree.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ParseError
from .message import Request, Response
from .states import DIALOG, HOLD, DialogEvent, HoldEvent, HoldState, transition
from .states import DialogState as DialogState
from .timers import Timer, TimerQueue
from .uri import Uri
from .wire import Address


class DialogStateChanged:
    """A dialog went from one state to another. Not changed once made; written out, not a
    frozen `@dataclass`, whose interpreted `__init__` cost ~9,000 instructions (four of these
    are made per call: see `uri.SipUri`)."""

    __slots__ = ("call_id", "dialog_id", "from_tag", "new_state", "old_state", "to_tag")

    def __init__(self, dialog_id: str, call_id: str, from_tag: str, to_tag: str,
                 old_state: DialogState, new_state: DialogState) -> None:
        self.dialog_id = dialog_id
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.old_state = old_state
        self.new_state = new_state

    def _key(self) -> tuple[str, str, str, str, DialogState, DialogState]:
        return (self.dialog_id, self.call_id, self.from_tag, self.to_tag, self.old_state,
                self.new_state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DialogStateChanged):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"DialogStateChanged(dialog_id={self.dialog_id!r}, call_id={self.call_id!r}, "
                f"from_tag={self.from_tag!r}, to_tag={self.to_tag!r}, "
                f"old_state={self.old_state!r}, new_state={self.new_state!r})")


Emit = Callable[[DialogStateChanged], None]


@dataclass(slots=True)
class OwnRequests:
    """What the proxy's own requests toward a leg changed: only legs that had a call
    operation (a transfer's REFER, a hold re-INVITE) have one."""

    # Requests we originated toward this leg (REFER, re-INVITE) took CSeq numbers from the
    # peer's sequence; requests relayed toward it later are shifted by this much.
    cseq_offset: int = 0
    sdp_version_sent: int = 0  # highest o= version we offered this leg ourselves
    # Media state the proxy set with its own re-INVITEs (call operations' hold): what the leg
    # must stop doing (SEND_OFF / RECV_OFF bits), set when such an offer is answered, and
    # where the offer in flight is (`states.HOLD`).
    hold_mask: int = 0
    hold_state: HoldState = HoldState.IDLE


class Leg:
    """One party of the dialog, as seen from the proxy. What our own requests changed
    (`OwnRequests`: CSeq shift, offer version, hold) is read through properties and made
    at the first change, so a call nobody operates on does not carry it."""

    __slots__ = ("_own", "address", "contact", "cseq", "local", "route_set", "sdp", "tag")

    def __init__(self, tag: str = "", contact: str = "", route_set: tuple[str, ...] = (),
                 cseq: int = 0, sdp: bytes | None = None, address: Address | None = None,
                 local: Address | None = None, cseq_offset: int = 0, sdp_version_sent: int = 0,
                 hold_mask: int = 0, hold_state: HoldState = HoldState.IDLE) -> None:
        self.tag = tag
        self.contact = contact  # remote target URI
        # Route values toward this leg. A tuple: it is replaced, never changed in place, and
        # the empty one (most legs' when nothing record-routes but us) is shared.
        self.route_set = route_set
        self.cseq = cseq  # last CSeq number in a request this leg sent
        self.sdp = sdp  # last SDP this leg sent
        self.address = address  # where its messages came from last
        self.local = local  # our socket that faces this leg
        self._own: OwnRequests | None = None
        if cseq_offset or sdp_version_sent or hold_mask or hold_state is not HoldState.IDLE:
            self._own = OwnRequests(cseq_offset, sdp_version_sent, hold_mask, hold_state)

    def _values(self) -> tuple[object, ...]:
        return (self.tag, self.contact, self.route_set, self.cseq, self.sdp, self.address,
                self.local, self.cseq_offset, self.sdp_version_sent, self.hold_mask,
                self.hold_state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Leg):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        return f"Leg{self._values()!r}"

    def _touched(self) -> OwnRequests:
        own = self._own
        if own is None:
            own = self._own = OwnRequests()
        return own

    @property
    def cseq_offset(self) -> int:
        own = self._own
        return own.cseq_offset if own is not None else 0

    @cseq_offset.setter
    def cseq_offset(self, value: int) -> None:
        self._touched().cseq_offset = value

    @property
    def sdp_version_sent(self) -> int:
        own = self._own
        return own.sdp_version_sent if own is not None else 0

    @sdp_version_sent.setter
    def sdp_version_sent(self, value: int) -> None:
        self._touched().sdp_version_sent = value

    @property
    def hold_mask(self) -> int:
        own = self._own
        return own.hold_mask if own is not None else 0

    @hold_mask.setter
    def hold_mask(self, value: int) -> None:
        self._touched().hold_mask = value

    @property
    def hold_state(self) -> HoldState:
        own = self._own
        return own.hold_state if own is not None else HoldState.IDLE

    @hold_state.setter
    def hold_state(self, value: HoldState) -> None:
        self._touched().hold_state = value

    @property
    def reinvite_pending(self) -> bool:
        """A hold re-INVITE of ours toward this leg is out or waits to be retried."""
        return self.hold_state is not HoldState.IDLE

    def hold_event(self, event: HoldEvent) -> None:
        self.hold_state = transition("hold", HOLD, self.hold_state, event)


class Dialog:
    __slots__ = (
        "_timeout", "call_id", "callee", "caller", "end_reason", "from_uri", "id",
        "lifetime_timer", "start_time", "state", "to_uri",
    )

    def __init__(self, dialog_id: str, call_id: str, from_uri: str, to_uri: str,
                 state: DialogState, start_time: float, caller: Leg, callee: Leg,
                 timeout_at: float | None = None) -> None:
        self.id = dialog_id
        self.call_id = call_id
        self.from_uri = from_uri
        self.to_uri = to_uri
        self.state = state
        self.start_time = start_time
        self._timeout = math.inf if timeout_at is None else timeout_at
        self.lifetime_timer: Timer | None = None
        self.end_reason = ""
        self.caller = caller
        self.callee = callee

    @property
    def timeout_at(self) -> float | None:
        """When its lifetime ends; None until one is armed. Kept as a plain float (infinite
        when unset): an optional one would be an object of its own per held dialog."""
        at = self._timeout
        return None if at == math.inf else at

    @timeout_at.setter
    def timeout_at(self, at: float | None) -> None:
        self._timeout = math.inf if at is None else at

    @classmethod
    def from_invite(cls, dialog_id: str, invite: Request, source: Address, local: Address,
                    now: float) -> Dialog:
        """The dialog an initial INVITE from `source` (received on `local`) starts."""
        contacts = invite.contacts
        caller = Leg(
            tag=invite.from_tag or "",
            contact=_target(contacts[0].uri) if contacts and contacts[0].uri else "",
            # Requests toward the caller follow the Record-Route entries that were already
            # on the INVITE when it reached us, in that order (RFC 3261 §12.1.1).
            route_set=tuple(invite.values("record-route")),
            cseq=invite.cseq.number,
            sdp=_sdp_of(invite),
            address=source,
            local=local,
        )
        return cls(dialog_id, invite.call_id, str(invite.from_.uri), str(invite.to.uri),
                   DialogState.UNCONFIRMED, now, caller, Leg())

    # -- snapshots (state replicated off the worker) --------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """What it takes to bring this dialog back in another process: ids, URIs, state,
        both legs (tags, remote targets, route sets, CSeq numbers and shifts, SDPs, offer
        versions, addresses), how old it is and how long it has left to live (milliseconds,
        relative to `now`), and the hold state of its call operations. Only str, int, bytes,
        list and dict (msgpack-friendly); a value that is unset is left out.

        What a call operation has in flight (a transfer, a hold re-INVITE) is not kept: the
        dialog comes back idle, with the hold state of the last re-INVITE that was answered.
        """
        snap: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "id": self.id,
            "call_id": self.call_id,
            "from_uri": self.from_uri,
            "to_uri": self.to_uri,
            "state": int(self.state),
            "age_ms": max(0, round((now - self.start_time) * 1000)),
            "caller": _leg_snapshot(self.caller),
            "callee": _leg_snapshot(self.callee),
        }
        if self.timeout_at is not None:
            snap["lifetime_ms"] = round((self.timeout_at - now) * 1000)
        if self.caller.hold_mask or self.callee.hold_mask:
            snap["hold"] = [self.caller.hold_mask, self.callee.hold_mask]
        return snap

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], now: float, elapsed: float = 0.0) -> Dialog:
        """The dialog `snapshot` described, `elapsed` seconds after the snapshot was taken:
        it is that much older and has that much less to live. Raises ValueError when `snap`
        is not a snapshot this version can read."""
        if not isinstance(snap, dict) or snap.get("v") != SNAPSHOT_VERSION:
            raise ValueError("not a dialog snapshot of this version")
        try:
            state = DialogState(_int(snap, "state"))
            taken = now - max(0.0, elapsed)  # when the snapshot was taken, on our clock
            lifetime = snap.get("lifetime_ms")
            dialog = cls(
                _str(snap, "id"), _str(snap, "call_id"), _str(snap, "from_uri"),
                _str(snap, "to_uri"), state, taken - _int(snap, "age_ms") / 1000,
                _leg_from(snap.get("caller")), _leg_from(snap.get("callee")),
                None if lifetime is None else taken + _int(snap, "lifetime_ms") / 1000,
            )
            hold = snap.get("hold")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad dialog snapshot: {exc}") from None
        if hold is not None:
            if not (isinstance(hold, list) and len(hold) == 2
                    and all(isinstance(m, int) and 0 <= m < 256 for m in hold)):
                raise ValueError("bad dialog snapshot: hold")
            dialog.caller.hold_mask, dialog.callee.hold_mask = hold
        return dialog

    @property
    def active(self) -> bool:
        return self.state is not DialogState.DELETED

    def leg_of(self, from_tag: str | None) -> tuple[Leg, Leg] | None:
        """(sender, receiver) for a request whose From tag is `from_tag`."""
        if from_tag == self.caller.tag:
            return self.caller, self.callee
        if self.callee.tag and from_tag == self.callee.tag:
            return self.callee, self.caller
        return None

    def _next(self, event: DialogEvent) -> DialogState:
        return transition("dialog", DIALOG, self.state, event)

    def _enter(self, new: DialogState, emit: Emit) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        if new is DialogState.DELETED:
            # Kept a while only so late messages still match: the SDPs are not needed.
            self.caller.sdp = self.callee.sdp = None
        emit(
            DialogStateChanged(self.id, self.call_id, self.caller.tag, self.callee.tag,
                               old, new)
        )

    # -- what the proxy relays -----------------------------------------------------------

    def on_invite_response(
        self,
        response: Response,
        own_record_routes: int,
        source: Address,
        local: Address,
        emit: Emit,
    ) -> None:
        """A response to the initial INVITE came from downstream."""
        status = response.status
        old = self.state
        unanswered = old is DialogState.UNCONFIRMED or old is DialogState.EARLY
        if status >= 300:
            event = DialogEvent.FAILURE
        elif status >= 200:
            event = DialogEvent.SUCCESS
        elif status == 100 or (unanswered and not response.to_tag):
            event = DialogEvent.TRYING
        else:
            event = DialogEvent.PROVISIONAL
        new = self._next(event)
        if not unanswered or event is DialogEvent.TRYING:
            return  # absorbed once answered (the table says why), or no dialog yet (§12.1)
        if event is DialogEvent.FAILURE:
            self.end_reason = f"{status}"
            self._enter(new, emit)
            return
        to_tag = response.to_tag
        callee = self.callee
        callee.tag = to_tag or callee.tag
        try:
            contacts = response.contacts
        except ParseError:
            # A broken Contact must not stop the response from being relayed; the remote
            # target stays what it was.
            contacts = []
        if contacts and contacts[0].uri is not None:
            callee.contact = _target(contacts[0].uri)
        rr = response.values("record-route")
        # Entries above ours were added downstream; toward the callee they apply in reverse.
        downstream = rr[: max(0, len(rr) - len(self.caller.route_set) - own_record_routes)]
        callee.route_set = tuple(reversed(downstream))
        callee.address = source
        callee.local = local
        sdp = _sdp_of(response)
        if sdp is not None:
            callee.sdp = sdp
        self._enter(new, emit)

    def on_request(self, request: Request, sender: Leg, emit: Emit) -> None:
        """An in-dialog request from `sender` is being relayed."""
        method = request.method
        if method != "ACK":
            sender.cseq = max(sender.cseq, request.cseq.number)
        sdp = _sdp_of(request)
        if sdp is not None:
            sender.sdp = sdp
        if method in ("INVITE", "UPDATE"):
            contacts = request.contacts
            if contacts and contacts[0].uri is not None:
                sender.contact = _target(contacts[0].uri)
        if method == "ACK":
            self._enter(self._next(DialogEvent.ACK), emit)
        elif method == "BYE":
            new = self._next(DialogEvent.BYE)
            self.end_reason = "bye"
            self._enter(new, emit)

    def on_response_to(self, request_method: str, response: Response, responder: Leg) -> None:
        """A response to an in-dialog request, sent by `responder`: its SDP, and for a
        target-refresh request its new remote target (RFC 3261 §12.2.1.2)."""
        if request_method in ("INVITE", "UPDATE") and 200 <= response.status < 300:
            sdp = _sdp_of(response)
            if sdp is not None:
                responder.sdp = sdp
            try:
                contacts = response.contacts
            except ParseError:
                return  # a broken Contact keeps the old target; the answer is still relayed
            if contacts and contacts[0].uri is not None:
                responder.contact = _target(contacts[0].uri)

    def delete(self, reason: str, emit: Emit) -> None:
        """The proxy ends this (still active) dialog itself."""
        new = self._next(DialogEvent.END)
        self.end_reason = reason
        self._enter(new, emit)


def _target(uri: Uri) -> str:
    """A remote target as the dialog keeps it. Interned: the calls of one trunk or gateway
    all name the same Contact, and then share one string (an interned string goes when its
    last dialog does)."""
    return sys.intern(str(uri))


def _sdp_of(message: Request | Response) -> bytes | None:
    if message.body and message.content_type == "application/sdp":
        return message.body
    return None


SNAPSHOT_VERSION = 1


def _address_snapshot(address: Address | None) -> list[Any] | None:
    return None if address is None else [address.transport, address.host, address.port]


def _leg_snapshot(leg: Leg) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tag": leg.tag,
        "contact": leg.contact,
        "route_set": list(leg.route_set),
        "cseq": leg.cseq,
        "cseq_offset": leg.cseq_offset,
        "sdp_version_sent": leg.sdp_version_sent,
    }
    if leg.sdp is not None:
        out["sdp"] = leg.sdp
    if leg.address is not None:
        out["address"] = _address_snapshot(leg.address)
    if leg.local is not None:
        out["local"] = _address_snapshot(leg.local)
    return out


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key}: expected a string")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key}: expected an integer")
    return value


def _address_from(value: Any) -> Address | None:
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 3
            or value[0] not in ("udp", "tcp") or not isinstance(value[1], str)
            or not isinstance(value[2], int) or not 0 <= value[2] < 65536):
        raise ValueError(f"not an address: {value!r}")
    return Address(value[0], value[1], value[2])


def _leg_from(data: Any) -> Leg:
    if not isinstance(data, dict):
        raise TypeError("leg: expected a map")
    routes = data.get("route_set", [])
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise TypeError("route_set: expected a list of strings")
    sdp = data.get("sdp")
    if sdp is not None and not isinstance(sdp, bytes):
        raise TypeError("sdp: expected bytes")
    return Leg(
        tag=_str(data, "tag"),
        contact=_str(data, "contact"),
        route_set=tuple(routes),
        cseq=_int(data, "cseq"),
        sdp=sdp,
        address=_address_from(data.get("address")),
        local=_address_from(data.get("local")),
        cseq_offset=_int(data, "cseq_offset"),
        sdp_version_sent=_int(data, "sdp_version_sent"),
    )


class DialogTable:
    """Dialogs of one worker, by id and by Call-ID."""

    __slots__ = ("_by_callid", "_by_id", "_next", "on_remove", "worker_id")

    def __init__(self, worker_id: int, first_seq: int) -> None:
        self.worker_id = worker_id
        self._next = first_seq
        self._by_id: dict[str, Dialog] = {}
        self._by_callid: dict[str, Dialog] = {}
        # Told when a dialog leaves the table: what layers above keep per dialog goes too.
        self.on_remove: list[Callable[[Dialog], None]] = []

    def new_id(self) -> str:
        """`<worker>.<seq>` in hex: safe in a URI parameter, and names the owning worker.
        Never one in the table (dialogs restored after a restart keep their ids)."""
        while True:
            self._next = (self._next + 1) & 0xFFFFFFFF
            dialog_id = f"{self.worker_id:x}.{self._next:x}"
            if dialog_id not in self._by_id:
                return dialog_id

    def add(self, dialog: Dialog) -> None:
        self._by_id[dialog.id] = dialog
        self._by_callid[dialog.call_id] = dialog

    def remove(self, dialog: Dialog) -> None:
        if self._by_id.pop(dialog.id, None) is None:
            return
        if self._by_callid.get(dialog.call_id) is dialog:
            del self._by_callid[dialog.call_id]
        if not self._by_id:
            # A dict does not shrink as entries go: once the last call is gone, the tables
            # sized for the busiest moment go too.
            self._by_id.clear()
            self._by_callid.clear()
        for listener in self.on_remove:
            listener(dialog)

    def by_id(self, dialog_id: str) -> Dialog | None:
        return self._by_id.get(dialog_id)

    def by_call_id(self, call_id: str) -> Dialog | None:
        return self._by_callid.get(call_id)

    def find(self, key: str) -> Dialog | None:
        """A dialog by id or by Call-ID (as `dialog:end_dlg` accepts either)."""
        return self._by_id.get(key) or self._by_callid.get(key)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._by_id.values()))

    def newest_first(self) -> Iterator[Dialog]:
        """The dialogs, the one added last first, without a copy: a caller reads as many as
        it needs and must not let the table change meanwhile (no await in between)."""
        return reversed(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


class Lifetimes:
    """When confirmed dialogs end of old age (the proxy's `dialog_lifetime`): the dialogs by
    the second their lifetime runs out, and one timer per such second rather than one per
    dialog, so a held call costs a dict entry here, not a timer and its callback. A dialog's
    `lifetime_timer` is its second's timer, armed at the earliest end among that second's
    dialogs; it ends those that are due and is armed again for the rest."""

    __slots__ = ("_by_second", "_expire", "_timers")

    def __init__(self, timers: TimerQueue, expire: Callable[[Dialog, float], None]) -> None:
        self._timers = timers
        self._expire = expire
        self._by_second: dict[int, dict[Dialog, None]] = {}

    def arm(self, dialog: Dialog, at: float) -> None:
        """End `dialog` at `at` (it must not be armed already)."""
        dialog.timeout_at = at
        second = math.floor(at)
        bucket = self._by_second.get(second)
        if bucket is None:
            bucket = self._by_second[second] = {}
            timer = None
        else:
            timer = next(iter(bucket)).lifetime_timer
        bucket[dialog] = None
        if timer is None or at < timer.when:
            if timer is not None:
                timer.cancel()
            self._arm_second(second, bucket, at)
        else:
            dialog.lifetime_timer = timer

    def disarm(self, dialog: Dialog) -> None:
        at = dialog.timeout_at
        timer = dialog.lifetime_timer
        if at is None or timer is None:
            return
        dialog.lifetime_timer = None
        second = math.floor(at)
        bucket = self._by_second.get(second)
        if bucket is None:
            return
        bucket.pop(dialog, None)
        if not bucket:
            self._drop(second)
            timer.cancel()

    def _drop(self, second: int) -> None:
        by_second = self._by_second
        del by_second[second]
        if not by_second:
            by_second.clear()  # a dict does not shrink as entries go: its table goes now

    def _arm_second(self, second: int, bucket: dict[Dialog, None], at: float) -> None:
        timer = self._timers.call_at(at, lambda now: self._run(second, now))
        for dialog in bucket:
            dialog.lifetime_timer = timer

    def _run(self, second: int, now: float) -> None:
        bucket = self._by_second.get(second)
        if bucket is None:
            return
        due: list[Dialog] = []
        later = math.inf
        for dialog in bucket:
            at = dialog.timeout_at
            if at is None or at <= now:
                due.append(dialog)
            elif at < later:
                later = at
        for dialog in due:
            del bucket[dialog]
            dialog.lifetime_timer = None
        if bucket:
            self._arm_second(second, bucket, later)
        else:
            self._drop(second)
        for dialog in due:
            self._expire(dialog, now)


def worker_of(dialog_id: str) -> int | None:
    head, dot, _ = dialog_id.partition(".")
    try:
        return int(head, 16) if dot else None
    except ValueError:
        return None

