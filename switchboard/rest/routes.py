"""The REST API's routes on the management HTTP server (aiohttp): calls, their operations,
tracked operations, the event stream and the OpenAPI document.

Every operation is the value `sip.operations` makes (the same functions, and so the same
checks, as the MI and the Python API), carried out by `ControlApi.operate`; its refusals
become problem details through `problems.problem_for`. Answers `202` with the operation
(`tracker`) and its `Location`; an `Idempotency-Key` gets a retry the first answer again.
Knows nothing of runtimes or of how SIP is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from switchboard.api import CommandError, ControlApi, refusal
from switchboard.capture import CaptureControl
from switchboard.events import E_DLG_STATE_CHANGED, KNOWN_EVENTS
from switchboard.sip.operations import Operation, Refused, end_call, hold, transfer

from .calls import STATE_NUMBERS, STATES, call_view, dialog_number
from .feed import TRACKED_EVENTS, EventFeed
from .openapi import document
from .problems import CONTENT_TYPE, Problem, encode, problem_for
from .tracker import Answer, Idempotency, KeyReused, OperationTracker

log = logging.getLogger(__name__)

PREFIX: Final = "/api/v1"
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
KEEPALIVE: Final = 15.0
POLL: Final = 1.0
MAX_KEY: Final = 255

Authorized = Callable[[web.Request], bool]


@dataclass(slots=True)
class RestState:
    api: ControlApi
    authorized: Authorized
    tracker: OperationTracker
    feed: EventFeed
    idempotency: Idempotency
    clock: Callable[[], float] = time.time
    # The node's message capture, asked of the API when first needed (`_capture_of`).
    capture: CaptureControl | None = None
    capture_asked: bool = False


_STATE: web.AppKey[RestState] = web.AppKey("switchboard.rest.state")


def mount(app: web.Application, api: ControlApi, authorized: Authorized) -> RestState:
    """Add the REST routes to `app`; the feed is closed with the app, the node's message
    capture (`ControlApi.capture`) stopped."""
    tracker = OperationTracker()
    state = RestState(api, authorized, tracker, EventFeed(api, tracker), Idempotency())
    app[_STATE] = state
    r = app.router
    r.add_get("/openapi.json", _openapi)
    r.add_get(f"{PREFIX}/calls", _list_calls)
    r.add_get(f"{PREFIX}/calls/{{call}}", _get_call)
    r.add_delete(f"{PREFIX}/calls/{{call}}", _end_call)
    r.add_post(f"{PREFIX}/calls/{{call}}/transfer", _transfer)
    r.add_post(f"{PREFIX}/calls/{{call}}/hold", _hold)
    r.add_post(f"{PREFIX}/calls/{{call}}/unhold", _unhold)
    r.add_get(f"{PREFIX}/calls/{{call}}/messages", _call_messages)
    r.add_get(f"{PREFIX}/capture", _get_capture)
    r.add_put(f"{PREFIX}/capture", _put_capture)
    r.add_get(f"{PREFIX}/operations/{{operation}}", _get_operation)
    r.add_get(f"{PREFIX}/events", _events)

    async def shutdown(app: web.Application) -> None:
        state.feed.end_streams()

    async def cleanup(app: web.Application) -> None:
        await state.feed.close()

    async def stop_capture(app: web.Application) -> None:
        if state.capture is not None:
            with contextlib.suppress(Exception):  # a node shutting down may not answer
                await state.capture.enable(False)

    app.on_shutdown.append(shutdown)
    app.on_shutdown.append(stop_capture)
    app.on_cleanup.append(cleanup)
    return state


# -- plumbing ---------------------------------------------------------------------------------


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=encode(doc),
                        headers={"Content-Type": "application/json", **(headers or {})})


def _guarded(handler: Callable[[web.Request, RestState], Any]
             ) -> Callable[[web.Request], Any]:
    """Check the bearer token, turn a `Problem` into its answer."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.app[_STATE]
        if not state.authorized(request):
            return Problem(401, "unauthorized", "Unauthorized",
                           "a bearer token is required").response(
                request.path, {"WWW-Authenticate": "Bearer"})
        try:
            response: web.StreamResponse = await handler(request, state)
        except Problem as problem:
            return problem.response(request.path)
        return response

    return guarded


def _query_text(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise Problem.invalid(name, "given more than once")
    return values[0] if values else None


async def _find_call(state: RestState, key: str) -> dict[str, Any]:
    """The `dialog:list` object of the call `key` names (a Call-ID or a dialog id)."""
    found = await state.api.list_dialogs(callid=key)
    number = dialog_number(key) if not found else None
    if number is not None:  # the first live dialog numbered from it on: it, if it lives
        found = [d for d in (await state.api.list_page(number - 1, 1))[0]
                 if d.get("ID") == key]
    if not found:
        raise Problem(404, "no-such-call", "No such call",
                      f"no live call has the Call-ID or dialog id {key!r}", sip_status=404)
    return found[0]


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "malformed-body", "Malformed body",
                      "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise Problem.invalid("body", "expected a JSON object")
    return doc


def _members(doc: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in doc:
        if name not in allowed:
            raise Problem.invalid(name, "unknown member")


# -- calls ------------------------------------------------------------------------------------


async def _list_calls_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    wanted_state = _query_text(request, "state")
    if wanted_state is not None and wanted_state not in STATES:
        raise Problem.invalid("state", f"one of {', '.join(STATES)}")
    limit_text = _query_text(request, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise Problem.invalid("limit", f"a number in 1..{MAX_LIMIT}")
        limit = int(limit_text)
    cursor_text = _query_text(request, "cursor")
    after: int | None = None
    if cursor_text is not None:
        if not cursor_text.isdigit() or len(cursor_text) > 20:
            raise Problem.invalid("cursor", "not a cursor this API gave")
        # Dialog numbers are 64-bit: past the last of them, nothing follows.
        after = min(int(cursor_text), (1 << 64) - 1)
    chosen, next_cursor = await state.api.list_page(
        after, limit, None if wanted_state is None else STATE_NUMBERS[wanted_state],
        _query_text(request, "from_user"), _query_text(request, "to_user"))
    return _json({"calls": [call_view(d, state.tracker) for d in chosen],
                  "next_cursor": None if next_cursor is None else str(next_cursor)})


async def _get_call_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    dialog = await _find_call(state, request.match_info["call"])
    return _json(call_view(dialog, state.tracker))


_list_calls = _guarded(_list_calls_impl)
_get_call = _guarded(_get_call_impl)


# -- operations -------------------------------------------------------------------------------

# (the call's `dialog:list` object, the body, the operation id) -> the operation.
MakeOperation = Callable[[dict[str, Any], dict[str, Any], str], Operation]


async def _operate(request: web.Request, state: RestState,
                   make: MakeOperation) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return _response(await _carry_out(request, state, make))
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable() or not key.isascii():
        raise Problem.invalid("Idempotency-Key", f"1 to {MAX_KEY} printable ASCII characters")
    fingerprint = Idempotency.fingerprint(request.method, request.path, await request.read())
    try:
        answer = await state.idempotency.answer(
            key, fingerprint, state.clock(), lambda: _carry_out(request, state, make))
    except KeyReused:
        raise Problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                      "this key came with another request", field="Idempotency-Key") from None
    return _response(answer)


def _response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body,
                        headers={"Content-Type": answer.content_type, **dict(answer.headers)})


async def _carry_out(request: web.Request, state: RestState,
                     make: MakeOperation) -> Answer:
    """Make the operation, hand it to the node, and say what came of it."""
    try:
        body = await _body(request)
        dialog = await _find_call(state, request.match_info["call"])
        try:
            op = make(dialog, body, state.tracker.new_id())
        except Refused as exc:
            raise problem_for(exc) from None
        await state.feed.need(TRACKED_EVENTS)
        tracked = state.tracker.begin(op, state.clock())
        try:
            await state.api.operate(op)
        except CommandError as exc:
            state.tracker.abandon(tracked.id)
            raise problem_for(refusal(exc)) from None
        except BaseException:
            state.tracker.abandon(tracked.id)
            raise
        state.tracker.sent(tracked.id, state.clock())
    except Problem as problem:
        return Answer(problem.status, encode(problem.body(request.path)), CONTENT_TYPE)
    location = f"{PREFIX}/operations/{tracked.id}"
    return Answer(202, encode(tracked.view()), "application/json", (("Location", location),))


def _make_transfer(dialog: dict[str, Any], body: dict[str, Any], op_id: str) -> Operation:
    _members(body, ("leg", "destination", "transfer_callid", "transfer_leg",
                    "transfer_fromtag", "transfer_totag"))
    if "leg" not in body:
        raise Refused.bad_input("leg", "missing")
    return transfer(dialog["callid"], body["leg"], body.get("destination"),
                    body.get("transfer_callid"), body.get("transfer_leg"),
                    body.get("transfer_fromtag"), body.get("transfer_totag"),
                    operation_id=op_id)


def _hold_maker(on: bool) -> MakeOperation:
    def make(dialog: dict[str, Any], body: dict[str, Any], op_id: str) -> Operation:
        _members(body, ("leg", "headers"))
        return hold(dialog["callid"], body.get("leg"), body.get("headers"), on=on,
                    operation_id=op_id)

    return make


def _make_end(dialog: dict[str, Any], body: dict[str, Any], op_id: str) -> Operation:
    _members(body, ())
    return end_call(dialog["ID"], operation_id=op_id)


async def _transfer_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    return await _operate(request, state, _make_transfer)


async def _hold_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    return await _operate(request, state, _hold_maker(True))


async def _unhold_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    return await _operate(request, state, _hold_maker(False))


async def _end_call_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    return await _operate(request, state, _make_end)


async def _get_operation_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    op_id = request.match_info["operation"]
    tracked = state.tracker.get(op_id)
    if tracked is None:
        raise Problem(404, "no-such-operation", "No such operation",
                      f"no operation has the id {op_id!r}")
    return _json(tracked.view())


_transfer = _guarded(_transfer_impl)
_hold = _guarded(_hold_impl)
_unhold = _guarded(_unhold_impl)
_end_call = _guarded(_end_call_impl)
_get_operation = _guarded(_get_operation_impl)


# -- the message capture (the console's ladder diagrams) --------------------------------------


def _capture_of(state: RestState) -> CaptureControl:
    if not state.capture_asked:
        state.capture, state.capture_asked = state.api.capture(), True
    if state.capture is None:
        raise Problem(404, "no-capture", "No message capture",
                      "this node keeps no message capture")
    return state.capture


async def _get_capture_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    return _json(await _capture_of(state).state())


async def _put_capture_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    capture = _capture_of(state)
    body = await _body(request)
    _members(body, ("enabled",))
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise Problem.invalid("enabled", "true or false")
    return _json(await capture.enable(enabled))


async def _call_messages_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    """The captured messages of a call, live or not (an ended call's stay while the capture
    holds them), by Call-ID or, for a live call, dialog id."""
    capture = _capture_of(state)
    call_id = request.match_info["call"]
    found = await capture.call_messages(call_id)
    if found is None:  # a live call's dialog id, or a live call nothing was captured of
        call_id = str((await _find_call(state, call_id)).get("callid", ""))
        found = await capture.call_messages(call_id) or []
    view = await capture.state()
    return _json({"call_id": call_id, "capturing": view["enabled"], "messages": found})


_get_capture = _guarded(_get_capture_impl)
_put_capture = _guarded(_put_capture_impl)
_call_messages = _guarded(_call_messages_impl)


# -- the event stream -------------------------------------------------------------------------


async def _events_impl(request: web.Request, state: RestState) -> web.StreamResponse:
    names: list[str] = []
    for value in request.query.getall("event", []):
        names.extend(v for v in value.split(",") if v)
    for name in names:
        if name not in KNOWN_EVENTS:
            raise Problem.invalid("event", f"one of {', '.join(KNOWN_EVENTS)}")
    wanted = frozenset(names or KNOWN_EVENTS)
    call = _query_text(request, "call")
    # The dialog state changes are subscribed only while someone wants them.
    listener = await state.feed.listen(
        [*TRACKED_EVENTS, *([E_DLG_STATE_CHANGED] if E_DLG_STATE_CHANGED in wanted else [])])
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b": switchboard events\n\n")
        quiet = 0.0
        while True:
            try:
                item = await asyncio.wait_for(listener.queue.get(), POLL)
            except TimeoutError:
                # A client that went away is only noticed on a write, or here.
                if request.transport is None or request.transport.is_closing():
                    break
                quiet += POLL
                if quiet >= KEEPALIVE:
                    quiet = 0.0
                    await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            if item.event not in wanted:
                continue
            if call is not None and call not in (
                    item.params.get("callid"), item.params.get("transfer_callid"),
                    item.params.get("id")):
                continue
            data = encode(item.view()).decode()
            await response.write(
                f"id: {item.seq}\nevent: {item.event}\ndata: {data}\n\n".encode())
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    finally:
        await state.feed.leave(listener)


_events = _guarded(_events_impl)


async def _openapi(request: web.Request) -> web.StreamResponse:
    return _json(document())
