"""Tracked operations: what became of each transfer, hold, unhold and end asked through REST.

An operation gets its id (`new_id`) before it is made, so that the operation value carries it
and the node copies it into every event the operation causes (`operation_id`). It is
registered before it is handed to the node (`begin`), marked sent when the node has sent its
request (`sent`), and then follows the `E_CALL_TRANSFER` / `E_CALL_HOLD` events that carry its
id (`observe`) to `ok` or `fail`, with the SIP status and the time of each step; an event of
another front end's operation (no id) belongs to none. The tracker also keeps what those
events tell about calls, whoever caused them: the transfer links between them and the hold
state the proxy's own re-INVITEs left. `Idempotency` remembers the first
answer to each `Idempotency-Key`.

Sans-IO: time comes in as `now` (Unix seconds), nothing here sends, receives or sleeps; it
knows the events' parameters, not how they are delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from switchboard.events import E_CALL_HOLD, E_CALL_TRANSFER
from switchboard.events.envelope import OPERATION_ID
from switchboard.sip.operations import (
    AttendedTransfer,
    BlindTransfer,
    EndCall,
    HoldChange,
    Operation,
)

Kind = Literal["transfer", "hold", "unhold", "end"]
State = Literal["pending", "ok", "fail"]

# How many operations (and calls' transfer links and hold states) are remembered; the oldest
# go first. A client polls an operation within minutes, not days.
MAX_OPERATIONS: Final = 10_000
MAX_CALLS: Final = 10_000


@dataclass(slots=True)
class Step:
    """One thing that happened to an operation: `step` is `accepted` (handed to the node),
    `sent` (its request went out), or the event's state (`start`, `linked`, `notify`, `ok`,
    `fail`); `status` the SIP status line the event carried, if any."""

    at: float
    step: str
    leg: str | None = None
    status: str | None = None

    def view(self) -> dict[str, Any]:
        return {"at": self.at, "step": self.step, "leg": self.leg, "status": self.status}


@dataclass(slots=True)
class Tracked:
    id: str
    kind: Kind
    call_id: str
    leg: str | None
    created_at: float
    state: State = "pending"
    updated_at: float = 0.0
    sip_status: int | None = None
    reason: str | None = None
    transfer_callid: str | None = None
    sent: bool = False
    steps: list[Step] = field(default_factory=list)
    # hold/unhold: the legs a re-INVITE went to, and how each was answered (ok, status line).
    started: set[str] = field(default_factory=set)
    answered: dict[str, tuple[bool, str | None]] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "call_id": self.call_id,
            "leg": self.leg,
            "state": self.state,
            "sip_status": self.sip_status,
            "reason": self.reason,
            "transfer_callid": self.transfer_callid,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": [s.view() for s in self.steps],
        }

    def step(self, now: float, name: str, leg: str | None = None,
             status: str | None = None) -> None:
        self.steps.append(Step(now, name, leg, status))
        self.updated_at = now

    def finish(self, now: float, ok: bool, status: str | None = None) -> None:
        if self.state != "pending":
            return
        self.state = "ok" if ok else "fail"
        self.updated_at = now
        if status:
            code, _, reason = status.partition(" ")
            if code.isdigit():
                self.sip_status = int(code)
                self.reason = reason or None
            else:
                self.reason = status


def status_code(status: str) -> int | None:
    code = status.partition(" ")[0]
    return int(code) if code.isdigit() else None


def kind_of(op: Operation) -> Kind:
    if isinstance(op, BlindTransfer | AttendedTransfer):
        return "transfer"
    if isinstance(op, HoldChange):
        return "hold" if op.hold else "unhold"
    return "end"


class OperationTracker:
    """Operations by id, and what their calls' events said."""

    def __init__(self, new_id: Callable[[], str] = lambda: secrets.token_hex(8)) -> None:
        self._new_id = new_id
        self._ops: OrderedDict[str, Tracked] = OrderedDict()
        self._links: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._held: OrderedDict[str, dict[str, bool]] = OrderedDict()

    def new_id(self) -> str:
        """An id for an operation about to be made (its `operation_id`)."""
        return self._new_id()

    def begin(self, op: Operation, now: float) -> Tracked:
        """Register `op`, about to be handed to the node, under its `operation_id` (a new id
        when it has none: its events will then belong to no operation)."""
        kind = kind_of(op)
        if isinstance(op, EndCall):
            call_id, leg = op.key, None
        elif isinstance(op, HoldChange):
            call_id, leg = op.call_id, op.leg or "both"
        else:
            call_id, leg = op.call_id, op.leg
        tracked = Tracked(op.operation_id or self._new_id(), kind, call_id, leg, now,
                          updated_at=now)
        if isinstance(op, AttendedTransfer):
            tracked.transfer_callid = op.transfer_callid
        tracked.step(now, "accepted")
        self._ops[tracked.id] = tracked
        while len(self._ops) > MAX_OPERATIONS:
            self._ops.popitem(last=False)
        return tracked

    def sent(self, op_id: str, now: float) -> None:
        """The node sent the operation's request(s). Ending a call is done then: the BYEs
        (or CANCEL) are out and the dialog is gone from the node."""
        tracked = self._ops.get(op_id)
        if tracked is None:
            return
        tracked.sent = True
        tracked.step(now, "sent")
        if tracked.kind == "end":
            tracked.finish(now, True)

    def abandon(self, op_id: str) -> None:
        """The node refused the operation: it never was one."""
        self._ops.pop(op_id, None)

    def get(self, op_id: str) -> Tracked | None:
        return self._ops.get(op_id)

    # -- events -----------------------------------------------------------------------------

    def observe(self, event: str, params: Mapping[str, Any], now: float) -> str | None:
        """Take in one event of the node; the id of the operation it belongs to, if any."""
        call_id = params.get("callid")
        if not isinstance(call_id, str):
            return None
        if event == E_CALL_TRANSFER:
            self._note_link(call_id, params)
        elif event == E_CALL_HOLD:
            self._note_hold(call_id, params)
        else:
            return None
        op_id = params.get(OPERATION_ID)
        tracked = self._ops.get(op_id) if isinstance(op_id, str) else None
        if tracked is None or tracked.call_id != call_id:
            return None
        state = str(params.get("state", ""))
        leg = params.get("leg") if isinstance(params.get("leg"), str) else None
        status = str(params.get("status") or "") or None
        if event == E_CALL_TRANSFER:
            new_call = params.get("transfer_callid")
            if state == "start" and new_call:
                state = "linked"
                tracked.transfer_callid = str(new_call)
            tracked.step(now, state, leg, status)
            if state in ("ok", "fail"):
                tracked.finish(now, state == "ok", status)
            return tracked.id
        tracked.step(now, state, leg, status)
        if leg is not None and tracked.state == "pending":
            if state == "start":
                tracked.started.add(leg)
            elif state in ("ok", "fail"):
                tracked.answered[leg] = (state == "ok", status)
                # Every re-INVITE goes out before any answer comes back (one mailbox turn).
                if tracked.started <= set(tracked.answered):
                    answers = list(tracked.answered.values())
                    ok = all(a[0] for a in answers)
                    # The status of the leg that failed, else of the last answer.
                    tracked.finish(now, ok, next(
                        (a[1] for a in answers if not a[0]), answers[-1][1]))
        return tracked.id

    def _note_link(self, call_id: str, params: Mapping[str, Any]) -> None:
        new_call = params.get("transfer_callid")
        if not new_call or params.get("state") not in ("start", "ok", "fail"):
            return
        link = {"call_id": str(new_call), "leg": params.get("leg"),
                "destination": params.get("destination") or None,
                "state": "linked" if params.get("state") == "start" else params.get("state")}
        for own, other, role in ((call_id, str(new_call), "to"), (str(new_call), call_id, "from")):
            links = self._links.setdefault(own, [])
            self._links.move_to_end(own)
            entry = {**link, "call_id": other, "direction": role}
            for index, old in enumerate(links):
                if old["call_id"] == other:
                    links[index] = entry
                    break
            else:
                links.append(entry)
        while len(self._links) > MAX_CALLS:
            self._links.popitem(last=False)

    def _note_hold(self, call_id: str, params: Mapping[str, Any]) -> None:
        leg = params.get("leg")
        if params.get("state") != "ok" or not isinstance(leg, str):
            return
        legs = self._held.setdefault(call_id, {})
        self._held.move_to_end(call_id)
        legs[leg] = params.get("action") == "hold"
        while len(self._held) > MAX_CALLS:
            self._held.popitem(last=False)

    def links(self, call_id: str) -> list[dict[str, Any]]:
        """The calls this one was transferred to (`direction` "to") or from ("from")."""
        return [dict(link) for link in self._links.get(call_id, ())]

    def held(self, call_id: str) -> dict[str, bool]:
        """leg -> on hold, as the last answered hold/unhold re-INVITE of each leg left it."""
        return dict(self._held.get(call_id, {}))


# -- Idempotency-Key --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as it was given: what a retry with the same key gets again."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


class KeyReused(Exception):
    """The key came with a different request than the first time."""


MAX_KEYS: Final = 10_000
KEY_LIFETIME: Final = 24 * 3600.0


class Idempotency:
    """The first answer to each `Idempotency-Key`: a retry gets it again (waiting for it if
    the first request is still being carried out), so nothing is sent twice."""

    def __init__(self) -> None:
        self._answers: OrderedDict[str, tuple[str, float, asyncio.Future[Answer]]] = (
            OrderedDict())

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> str:
        return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()

    async def answer(self, key: str, fingerprint: str, now: float,
                     make: Callable[[], Awaitable[Answer]]) -> Answer:
        """The answer for `key`: the first one, or `make()`'s when the key is new. Raises
        KeyReused when the key was used for another request."""
        self._expire(now)
        known = self._answers.get(key)
        if known is not None:
            if known[0] != fingerprint:
                raise KeyReused(key)
            return await asyncio.shield(known[2])
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answers[key] = (fingerprint, now, future)
        while len(self._answers) > MAX_KEYS:
            self._answers.popitem(last=False)
        try:
            answer = await make()
        except BaseException as exc:
            # Not answered at all (the client went away, a bug): a retry may try again.
            self._answers.pop(key, None)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiting retries get it, nobody else must
            raise
        future.set_result(answer)
        return answer

    def _expire(self, now: float) -> None:
        while self._answers:
            key, (_, at, future) = next(iter(self._answers.items()))
            if now - at < KEY_LIFETIME or not future.done():
                return
            del self._answers[key]
