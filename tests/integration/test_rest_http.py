"""The REST API on a real socket, against a fake node whose events reach the API the way the
runtimes hand them over (`ControlApi.watch`): calls, operations and their tracking by
operation id, the Idempotency-Key, problem details, the bearer token and the SSE stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from switchboard.api import CommandError
from switchboard.mi.http import MIServer, start_mi_server
from switchboard.sip.operations import BlindTransfer, EndCall, HoldChange, Operation
from tests.support.fake_api import FakeApi

PROBLEM = "application/problem+json"


def dialog(n: int, callid: str, state: int = 4, from_user: str = "alice") -> dict[str, Any]:
    return {
        "ID": f"a.{n:x}", "db_id": (10 << 32) | n, "state": state, "callid": callid,
        "timestart": 1_700_000_000 + n,
        "from_uri": f"sip:{from_user}@example.com", "to_uri": "sip:bob@example.com",
        "caller_tag": f"ta{n}", "caller_contact": "sip:alice@127.0.0.1:5070",
        "caller_sdp": "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
        "CALLEES": [{"callee_tag": f"tb{n}", "callee_contact": "sip:bob@127.0.0.1:5080",
                     "callee_sdp": "v=0\r\nm=audio 4002 RTP/AVP 0\r\na=recvonly\r\n"}],
    }


class EventingApi(FakeApi):
    """FakeApi whose `operate` raises once what `refuse` holds."""

    def __init__(self, dialogs: list[dict[str, Any]]) -> None:
        super().__init__(dialogs, {}, uptime=1.0, started_at=1_700_000_000.0)
        self.refuse: CommandError | None = None

    async def operate(self, op: Operation) -> None:
        if self.refuse is not None:
            refuse, self.refuse = self.refuse, None
            raise refuse
        await super().operate(op)


@pytest.fixture
async def api() -> AsyncIterator[EventingApi]:
    fake = EventingApi([dialog(1, "call-1"), dialog(2, "call-2", state=2, from_user="carol"),
                        dialog(3, "call-3")])
    yield fake


@pytest.fixture
async def server(api: EventingApi) -> AsyncIterator[MIServer]:
    mi = await start_mi_server(api, "127.0.0.1", 0, token="s3cret")
    yield mi
    await mi.close()


@pytest.fixture
async def http(server: MIServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": "Bearer s3cret"}) as session:
        yield session


async def wait_state(http: aiohttp.ClientSession, location: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        async with http.get(location) as r:
            assert r.status == 200
            op: dict[str, Any] = await r.json()
        if op["state"] == state:
            return op
        await asyncio.sleep(0.02)
    raise AssertionError(f"operation stayed {op['state']}: {op}")


async def test_token_is_required(server: MIServer) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"http://127.0.0.1:{server.port}/api/v1/calls") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.content_type == PROBLEM
            assert (await r.json(content_type=PROBLEM))["status"] == 401
        # The document holds no call data.
        async with anonymous.get(f"http://127.0.0.1:{server.port}/openapi.json") as r:
            assert r.status == 200
            assert (await r.json())["openapi"] == "3.1.0"


async def test_calls_filtered_and_paged(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/calls", params={"limit": "2"}) as r:
        first = await r.json()
    assert [c["call_id"] for c in first["calls"]] == ["call-1", "call-2"]
    async with http.get("/api/v1/calls",
                        params={"limit": "2", "cursor": first["next_cursor"]}) as r:
        second = await r.json()
    assert [c["call_id"] for c in second["calls"]] == ["call-3"]
    assert second["next_cursor"] is None
    async with http.get("/api/v1/calls", params={"state": "early"}) as r:
        assert [c["call_id"] for c in (await r.json())["calls"]] == ["call-2"]
    async with http.get("/api/v1/calls", params={"from_user": "alice"}) as r:
        assert [c["call_id"] for c in (await r.json())["calls"]] == ["call-1", "call-3"]
    async with http.get("/api/v1/calls", params={"state": "ringing"}) as r:
        assert r.status == 422
        assert (await r.json(content_type=PROBLEM))["field"] == "state"


async def test_one_call_by_call_id_or_dialog_id(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/calls/call-1") as r:
        by_callid = await r.json()
    async with http.get("/api/v1/calls/a.1") as r:
        by_id = await r.json()
    assert by_callid == by_id
    assert by_id["state"] == "confirmed"
    assert [(leg["leg"], leg["tag"], leg["media"], leg["on_hold"]) for leg in by_id["legs"]] == [
        ("caller", "ta1", "sendrecv", False), ("callee", "tb1", "recvonly", True)]
    assert by_id["hold"] == "callee"
    async with http.get("/api/v1/calls/nope") as r:
        assert r.status == 404
        problem = await r.json(content_type=PROBLEM)
    assert problem["type"] == "urn:switchboard:problem:no-such-call"
    assert problem["instance"] == "/api/v1/calls/nope"


async def test_transfer_is_tracked_to_its_end(api: EventingApi,
                                              http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/calls/a.1/transfer",
                         json={"leg": "caller", "destination": "sip:carol@example.com"}) as r:
        assert r.status == 202
        location = r.headers["Location"]
        op = await r.json()
    assert location == f"/api/v1/operations/{op['id']}"
    assert (op["kind"], op["state"], op["call_id"]) == ("transfer", "pending", "call-1")
    # The operation carries its id to the node, which puts it in the events it causes.
    assert api.operated == [BlindTransfer("call-1", "caller", "sip:carol@example.com",
                                          op["id"])]
    common = {"callid": "call-1", "leg": "caller", "destination": "sip:carol@example.com",
              "operation_id": op["id"]}
    # Another front end's transfer of the same call (no operation id) is not this one.
    api.emit("E_CALL_TRANSFER", **{**common, "operation_id": None}, transfer_callid="",
             state="fail", status="603 Decline")
    api.emit("E_CALL_TRANSFER", **common, transfer_callid="", state="start", status="")
    api.emit("E_CALL_TRANSFER", **common, transfer_callid="new-1", state="start", status="")
    api.emit("E_CALL_TRANSFER", **common, transfer_callid="new-1", state="fail",
             status="486 Busy Here")
    done = await wait_state(http, location, "fail")
    assert (done["sip_status"], done["reason"]) == (486, "Busy Here")
    assert done["transfer_callid"] == "new-1"
    assert [(s["step"], s["status"]) for s in done["steps"]] == [
        ("accepted", None), ("sent", None), ("start", None), ("linked", None),
        ("fail", "486 Busy Here")]
    async with http.get("/api/v1/calls/call-1") as r:
        links = (await r.json())["transfers"]
    assert links == [{"call_id": "new-1", "direction": "to", "leg": "caller",
                      "destination": "sip:carol@example.com", "state": "fail"}]


async def test_hold_of_both_legs_is_ok_when_both_answer(api: EventingApi,
                                                        http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/calls/call-3/hold") as r:
        assert r.status == 202
        location = r.headers["Location"]
        op_id = (await r.json())["id"]
    assert api.operated == [HoldChange("call-3", True, None, (), (), op_id)]
    hold = {"callid": "call-3", "action": "hold", "operation_id": op_id}
    for leg in ("caller", "callee"):
        api.emit("E_CALL_HOLD", **hold, leg=leg, state="start")
    api.emit("E_CALL_HOLD", **hold, leg="caller", state="ok", status="200 OK")
    # An MI-made hold's answer (no operation id) does not finish this one.
    api.emit("E_CALL_HOLD", callid="call-3", leg="callee", action="hold", state="ok")
    await asyncio.sleep(0.1)
    async with http.get(location) as r:
        assert (await r.json())["state"] == "pending"
    api.emit("E_CALL_HOLD", **hold, leg="callee", state="ok", status="200 OK")
    done = await wait_state(http, location, "ok")
    assert [s["step"] for s in done["steps"]] == ["accepted", "sent", "start", "start", "ok",
                                                  "ok"]
    assert (done["sip_status"], done["reason"]) == (200, "OK")
    async with http.get("/api/v1/calls/call-3") as r:
        assert (await r.json())["hold"] == "both"


async def test_idempotent_retry_sends_once(api: EventingApi, http: aiohttp.ClientSession) -> None:
    body = {"leg": "callee", "destination": "sip:dave@example.com"}
    headers = {"Idempotency-Key": "retry-1"}
    answers = []
    for _ in range(2):
        async with http.post("/api/v1/calls/call-1/transfer", json=body, headers=headers) as r:
            answers.append((r.status, r.headers["Location"], await r.read()))
    assert answers[0] == answers[1]
    assert len(api.operated) == 1
    # Two at once: still one.
    await asyncio.gather(*(http.post("/api/v1/calls/call-3/unhold", headers={
        "Idempotency-Key": "retry-2"}) for _ in range(3)))
    assert len(api.operated) == 2
    async with http.post("/api/v1/calls/call-3/transfer", json=body, headers=headers) as r:
        assert r.status == 422
        assert (await r.json(content_type=PROBLEM))["field"] == "Idempotency-Key"


async def test_end_call(api: EventingApi, http: aiohttp.ClientSession) -> None:
    async with http.delete("/api/v1/calls/call-1") as r:
        assert r.status == 202
        op = await r.json()
    assert (op["kind"], op["state"]) == ("end", "ok")
    assert api.ended == [("a.1", ())]


@pytest.mark.parametrize(("body", "field"), [
    ({"leg": "caller", "destination": "sip:x@example.com\r\nX-Injected: 1"}, "destination"),
    ({"leg": "nobody", "destination": "sip:x@example.com"}, "leg"),
    ({"destination": "sip:x@example.com"}, "leg"),
    ({"leg": "caller"}, "destination"),
    ({"leg": "caller", "destination": "sip:x@example.com", "via": "x"}, "via"),
])
async def test_bad_transfer_input_names_the_field(api: EventingApi, http: aiohttp.ClientSession,
                                                  body: dict[str, Any], field: str) -> None:
    async with http.post("/api/v1/calls/call-1/transfer", json=body) as r:
        assert r.status == 422
        assert r.content_type == PROBLEM
        problem = await r.json(content_type=PROBLEM)
    assert problem["field"] == field
    assert problem["detail"].startswith(field)
    assert api.operated == []


async def test_bad_hold_leg_and_malformed_body(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/calls/call-1/hold", json={"leg": "nobody"}) as r:
        assert r.status == 422
        assert (await r.json(content_type=PROBLEM))["field"] == "leg"
    async with http.post("/api/v1/calls/call-1/hold", data=b"{") as r:
        assert r.status == 400
        assert r.content_type == PROBLEM


@pytest.mark.parametrize(("error", "status", "kind"), [
    (CommandError(491, "Request Pending"), 409, "operation-pending"),
    (CommandError(410, "Dialog not ready"), 409, "call-not-ready"),
    (CommandError(480, "No dialog legs on hold"), 409, "nothing-to-change"),
    (CommandError.dialog_not_found(), 404, "no-such-call"),
    (CommandError(-32000, "Server error", "the re-INVITE could not be sent"), 502, "not-sent"),
])
async def test_the_node_refusing(api: EventingApi, http: aiohttp.ClientSession,
                                 error: CommandError, status: int, kind: str) -> None:
    api.refuse = error
    async with http.post("/api/v1/calls/call-1/unhold", json={"leg": "caller"}) as r:
        assert r.status == status
        problem = await r.json(content_type=PROBLEM)
    assert problem["type"] == f"urn:switchboard:problem:{kind}"
    assert problem["status"] == status


async def test_event_stream(api: EventingApi, server: MIServer,
                            http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/events", params={"call": "call-3"}) as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        assert await stream.content.readline() == b": switchboard events\n"
        await stream.content.readline()
        async with http.post("/api/v1/calls/call-3/hold", json={"leg": "caller"}) as r:
            op = await r.json()
        api.emit("E_DLG_STATE_CHANGED", id="a.1", callid="call-1", new_state=5)
        api.emit("E_CALL_HOLD", callid="call-3", leg="caller", action="hold", state="start",
                 operation_id=op["id"])
        lines = [await stream.content.readline() for _ in range(3)]
    assert lines[1] == b"event: E_CALL_HOLD\n"
    data = json.loads(lines[2].removeprefix(b"data: "))
    assert data["operation"] == op["id"]
    assert data["params"] == {"callid": "call-3", "leg": "caller", "action": "hold",
                              "state": "start", "operation_id": op["id"]}
    assert api.operated == [HoldChange("call-3", True, "caller", (), (), op["id"])]
    assert not any(isinstance(o, EndCall) for o in api.operated)
    # The last stream client gone, the dialog state changes are unsubscribed again.
    for _ in range(250):
        if "E_DLG_STATE_CHANGED" not in api.watched():
            break
        await asyncio.sleep(0.02)
    assert "E_DLG_STATE_CHANGED" not in api.watched()
    assert "E_CALL_HOLD" in api.watched()
