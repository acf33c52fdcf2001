"""JSON-RPC handling per OpenSIPS mi_http, and the built-in commands, against a fake node."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from switchboard import __version__
from switchboard.mi.commands import REGISTRY, select_statistics
from switchboard.mi.dispatch import (
    ENCODE_SLICE,
    dispatch,
    encode_response,
    encode_response_parts,
    handle_request,
)
from switchboard.mi.http import start_mi_server
from switchboard.mi.registry import CommandContext, Params, Registry
from tests.support.fake_api import FakeApi

DIALOG_A = {"ID": "3a1.5f2", "state": 4, "callid": "call-a", "caller_tag": "ta", "CALLEES": []}
DIALOG_B = {"ID": "1b.77", "state": 2, "callid": "call-b", "caller_tag": "tb", "CALLEES": []}

STATS = {
    "core:rcv_requests": 10,
    "core:rcv_replies": 7,
    "dialog:active_dialogs": 2,
    "dialog:early_dialogs": 1,
    "tm:UAS_transactions": 3,
}


NOW = 1_000_000_125.7


@pytest.fixture
def api() -> FakeApi:
    return FakeApi([DIALOG_A, DIALOG_B], STATS, uptime=125.7, started_at=1_000_000_000.0)


@pytest.fixture
def ctx(api: FakeApi) -> CommandContext:
    return CommandContext(api=api, registry=REGISTRY, clock=lambda: NOW)


async def call(ctx: CommandContext, method: str, params: Any = None, **extra: Any) -> Any:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        request["params"] = params
    request.update(extra)
    return await handle_request(json.dumps(request), ctx)


def error(code: int, message: str, data: str | None = None, request_id: Any = 7) -> Any:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": request_id}


def result(value: Any, request_id: Any = 7) -> Any:
    return {"jsonrpc": "2.0", "result": value, "id": request_id}


# --- JSON-RPC framing --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body", [b"{", b"", b"not json", b'{"jsonrpc": "2.0", "id": NaN}', b"\xff"]
)
async def test_unparseable_body_is_a_parse_error(ctx: CommandContext, body: bytes) -> None:
    assert await handle_request(body, ctx) == error(-32700, "Parse error", request_id=None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_obj",
    [
        [{"jsonrpc": "2.0", "id": 1, "method": "which"}],  # batches are not supported
        "which",
        42,
        {"id": 1, "method": "which"},
        {"jsonrpc": "1.0", "id": 1, "method": "which"},
        {"jsonrpc": 2.0, "id": 1, "method": "which"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "which", "params": "command"},
        {"jsonrpc": "2.0", "id": 1, "method": "which", "params": None},
    ],
)
async def test_invalid_requests(ctx: CommandContext, request_obj: Any) -> None:
    response = await handle_request(json.dumps(request_obj), ctx)
    request_id = 1 if isinstance(request_obj, dict) and "id" in request_obj else None
    assert response == error(-32600, "Invalid Request", request_id=request_id)


@pytest.mark.asyncio
@pytest.mark.parametrize("bad_id", [{"a": 1}, [1], True])
async def test_an_id_of_the_wrong_type_is_invalid_and_answered_with_null(
    ctx: CommandContext, bad_id: Any
) -> None:
    response = await handle_request(
        json.dumps({"jsonrpc": "2.0", "id": bad_id, "method": "which"}), ctx
    )
    assert response == error(-32600, "Invalid Request", request_id=None)


@pytest.mark.asyncio
@pytest.mark.parametrize("request_id", ["abc", 12, 1.5, None])
async def test_the_id_comes_back_as_sent(ctx: CommandContext, request_id: Any) -> None:
    response = await handle_request(
        json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "version"}), ctx
    )
    assert response is not None
    assert response["id"] == request_id
    assert "result" in response


@pytest.mark.asyncio
async def test_unknown_method(ctx: CommandContext) -> None:
    assert await call(ctx, "no:such") == error(-32601, "Method not found")


@pytest.mark.asyncio
async def test_notifications_get_no_response_but_run(ctx: CommandContext, api: FakeApi) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "dialog:end_dlg", "params": ["call-a"]})
    assert await handle_request(body, ctx) is None
    assert api.ended == [("call-a", ())]
    # Errors of a valid notification are not answered either...
    body = json.dumps({"jsonrpc": "2.0", "method": "no:such"})
    assert await handle_request(body, ctx) is None
    body = json.dumps({"jsonrpc": "2.0", "method": "dialog:end_dlg", "params": ["nope"]})
    assert await handle_request(body, ctx) is None
    # ...but a request that is not valid JSON-RPC is, with id null (OpenSIPS does the same).
    body = json.dumps({"jsonrpc": "1.0", "method": "which"})
    assert await handle_request(body, ctx) == error(-32600, "Invalid Request", request_id=None)


@pytest.mark.asyncio
async def test_params_that_match_no_recipe(ctx: CommandContext) -> None:
    assert await call(ctx, "dialog:end_dlg") == error(
        -32602, "Invalid params", "Too few or too many parameters"
    )
    assert await call(ctx, "dialog:end_dlg", {"dialog": "x"}) == error(
        -32602, "Invalid params", "Named parameters do not match"
    )
    assert await call(ctx, "uptime", ["x"]) == error(
        -32602, "Invalid params", "Too few or too many parameters"
    )


@pytest.mark.asyncio
async def test_wrong_parameter_type(ctx: CommandContext) -> None:
    assert await call(ctx, "dialog:list", {"callid": ["x"]}) == error(
        -32602, "Invalid params", "Bad type for parameter 'callid'"
    )


@pytest.mark.asyncio
async def test_unexpected_exception_is_a_server_error_and_is_logged(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()

    @registry.command("boom")
    async def boom(ctx: CommandContext, params: Params) -> Any:
        raise RuntimeError("kaboom")

    @registry.command("fine")
    async def fine(ctx: CommandContext, params: Params) -> Any:
        return "still here"

    ctx = CommandContext(api=api, registry=registry)
    with caplog.at_level(logging.ERROR, logger="switchboard.mi.dispatch"):
        response = await call(ctx, "boom")
    assert response == error(-32000, "Server error", "Command handler returned null")
    assert "kaboom" in caplog.text
    assert await call(ctx, "fine") == result("still here")


@pytest.mark.asyncio
async def test_dispatch_returns_compact_bytes(ctx: CommandContext) -> None:
    body = b'{"jsonrpc":"2.0","id":"x","method":"version"}'
    answer = await dispatch(body, ctx)
    assert answer is not None
    assert answer.startswith(b'{"jsonrpc":"2.0","result":{"Server":"switchboard (')
    assert answer.endswith(b'"id":"x"}')
    assert b" " not in answer.replace(b"switchboard (", b"").split(b'"Server"')[0]
    assert await dispatch(b'{"jsonrpc":"2.0","method":"version"}', ctx) is None


def test_a_result_json_cannot_carry_becomes_a_server_error() -> None:
    encoded = encode_response({"jsonrpc": "2.0", "result": {1, 2}, "id": 3})
    assert json.loads(encoded) == error(
        -32000, "Server error", "Command handler returned null", request_id=3
    )


def _many_dialogs(n: int) -> list[dict[str, Any]]:
    return [{"ID": f"1.{i:x}", "state": 4, "callid": f"c-{i}", "caller_tag": f"t{i}",
             "from_uri": "sip:ünïcode@example.com", "CALLEES": [{"tag": i}]}
            for i in range(n)]


@pytest.mark.asyncio
@pytest.mark.parametrize("n", [ENCODE_SLICE, ENCODE_SLICE + 1, 2 * ENCODE_SLICE, 3 * ENCODE_SLICE + 7])
async def test_a_long_result_in_parts_is_the_same_json(n: int) -> None:
    for request_id in (7, "x", None, 2.5):
        response = {"jsonrpc": "2.0",
                    "result": {"Before": 1, "Dialogs": _many_dialogs(n), "After": []},
                    "id": request_id}
        expected = encode_response(response)
        parts = await encode_response_parts(response)
        assert b"".join(parts) == expected
        assert (len(parts) > 1) == (n > ENCODE_SLICE)
        if n > ENCODE_SLICE:  # each slice let go once encoded (freed over the loop's turns)
            assert response["result"]["Dialogs"] == [None] * n


@pytest.mark.asyncio
async def test_the_loop_turns_while_a_long_result_is_encoded() -> None:
    import asyncio

    turns = 0
    stop = False

    async def other_work() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    before = turns
    await encode_response_parts(
        {"jsonrpc": "2.0", "result": {"Dialogs": _many_dialogs(5 * ENCODE_SLICE)}, "id": 1})
    stop = True
    await task
    assert turns - before >= 4  # once between each two slices


@pytest.mark.asyncio
async def test_a_long_result_json_cannot_carry_becomes_a_server_error() -> None:
    dialogs: list[Any] = _many_dialogs(2 * ENCODE_SLICE)
    dialogs[-1] = {"bad": {1, 2}}
    parts = await encode_response_parts(
        {"jsonrpc": "2.0", "result": {"Dialogs": dialogs}, "id": 3})
    assert json.loads(b"".join(parts)) == error(
        -32000, "Server error", "Command handler returned null", request_id=3
    )


@pytest.mark.asyncio
async def test_a_long_answer_over_http_arrives_whole(api: FakeApi) -> None:
    import aiohttp

    api.dialogs = _many_dialogs(3 * ENCODE_SLICE + 1)
    server = await start_mi_server(api, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, session.post(
            server.url, json={"jsonrpc": "2.0", "id": 1, "method": "dialog:list"}
        ) as reply:
            assert reply.status == 200
            assert reply.content_type == "application/json"
            body = await reply.json()
    finally:
        await server.close()
    assert body == {"jsonrpc": "2.0", "result": {"Dialogs": api.dialogs}, "id": 1}


# --- core commands -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_which_lists_every_name_including_aliases(ctx: CommandContext) -> None:
    response = await call(ctx, "which")
    names = response["result"]
    for name in (
        "which",
        "version",
        "uptime",
        "dialog:list",
        "dlg_list",
        "dialog:end_dlg",
        "dlg_end_dlg",
        "statistics:get",
        "get_statistics",
        "evi:subscribe",
        "event_subscribe",
    ):
        assert name in names
    assert len(names) == len(set(names))


@pytest.mark.asyncio
async def test_which_command_gives_the_recipes(ctx: CommandContext) -> None:
    assert await call(ctx, "which", {"command": "dlg_list"}) == result(
        [[], ["callid"], ["callid", "from_tag"]]
    )
    assert await call(ctx, "which", ["evi:subscribe"]) == result(
        [["event", "socket"], ["event", "socket", "expire"]]
    )
    assert await call(ctx, "which", {"command": "uptime"}) == result([[]])


@pytest.mark.asyncio
async def test_which_unknown_command(ctx: CommandContext) -> None:
    assert await call(ctx, "which", {"command": "nope"}) == error(404, "unknown MI command")


@pytest.mark.asyncio
async def test_version(ctx: CommandContext) -> None:
    response = await call(ctx, "version")
    server = response["result"]["Server"]
    assert server.startswith(f"switchboard ({__version__} (")
    assert list(response["result"]) == ["Server"]


@pytest.mark.asyncio
async def test_uptime(ctx: CommandContext) -> None:
    assert await call(ctx, "uptime") == result(
        {
            "Now": time.ctime(NOW),
            "Up since": time.ctime(1_000_000_000.0),
            "Up time": "125 [sec]",
        }
    )


# --- dialog commands ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["dialog:list", "dlg_list"])
async def test_dialog_list(ctx: CommandContext, method: str) -> None:
    assert await call(ctx, method) == result({"Dialogs": [DIALOG_A, DIALOG_B]})


@pytest.mark.asyncio
async def test_dialog_list_by_callid(ctx: CommandContext) -> None:
    assert await call(ctx, "dialog:list", {"callid": "call-b"}) == result({"Dialog": DIALOG_B})
    assert await call(ctx, "dlg_list", ["call-a", "ta"]) == result({"Dialog": DIALOG_A})
    assert await call(ctx, "dialog:list", {"callid": "call-a", "from_tag": "tb"}) == error(
        404, "Dialog not found"
    )
    assert await call(ctx, "dialog:list", ["nope"]) == error(404, "Dialog not found")


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["dialog:end_dlg", "dlg_end_dlg"])
async def test_dialog_end(ctx: CommandContext, api: FakeApi, method: str) -> None:
    assert await call(ctx, method, {"dialog_id": "3a1.5f2"}) == result("OK")
    assert await call(ctx, method, ["call-b", "X-Reason: test\r\n"]) == result("OK")
    assert api.ended == [("3a1.5f2", ()), ("call-b", (("X-Reason", "test"),))]
    assert await call(ctx, method, {"dialog_id": "unknown"}) == error(404, "Dialog not found")


# --- statistics --------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["statistics:get", "get_statistics"])
async def test_statistics_all(ctx: CommandContext, method: str) -> None:
    assert await call(ctx, method, {"statistics": ["all"]}) == result(STATS)


@pytest.mark.asyncio
async def test_statistics_groups_and_single_values(ctx: CommandContext) -> None:
    assert await call(ctx, "statistics:get", [["dialog:", "tm:UAS_transactions"]]) == result(
        {"dialog:active_dialogs": 2, "dialog:early_dialogs": 1, "tm:UAS_transactions": 3}
    )
    # A bare name finds the statistic in whatever group; names match case-insensitively.
    assert await call(ctx, "statistics:get", {"statistics": ["RCV_requests", "nope"]}) == result(
        {"core:rcv_requests": 10}
    )


@pytest.mark.asyncio
async def test_statistics_errors(ctx: CommandContext) -> None:
    assert await call(ctx, "statistics:get", {"statistics": ["nope:", "x"]}) == error(
        404, "Statistics Not Found"
    )
    assert await call(ctx, "statistics:get", {"statistics": []}) == error(
        -32602, "Invalid params", "Empty array in parameter 'statistics'"
    )
    assert await call(ctx, "statistics:get", {"statistics": "all"}) == error(
        -32602, "Invalid params", "Bad type for parameter 'statistics'"
    )


def test_select_statistics_keeps_request_order_without_duplicates() -> None:
    selected = select_statistics(STATS, ["tm:", "all"])
    assert list(selected) == [
        "tm:UAS_transactions",
        *[k for k in STATS if k != "tm:UAS_transactions"],
    ]


# --- event subscription ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["evi:subscribe", "event_subscribe"])
async def test_evi_subscribe(ctx: CommandContext, api: FakeApi, method: str) -> None:
    assert await call(ctx, method, ["E_CALL_TRANSFER", "udp:127.0.0.1:9000"]) == result("OK")
    assert await call(
        ctx, method, {"event": "E_CALL_HOLD", "socket": "tcp:[::1]:9001", "expire": "0"}
    ) == result("OK")
    assert await call(ctx, method, ["E_DLG_STATE_CHANGED", "udp:127.0.0.1:9002", 120]) == result(
        "OK"
    )
    assert api.subscribed == [
        ("E_CALL_TRANSFER", "udp:127.0.0.1:9000", 3600),
        ("E_CALL_HOLD", "tcp:[::1]:9001", 0),
        ("E_DLG_STATE_CHANGED", "udp:127.0.0.1:9002", 120),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "socket", ["unix:/tmp/sock", "udp:127.0.0.1", "udp:localhost:9000", "udp:127.0.0.1:0", "x"]
)
async def test_evi_subscribe_bad_socket(ctx: CommandContext, api: FakeApi, socket: str) -> None:
    response = await call(ctx, "evi:subscribe", ["E_CALL_HOLD", socket])
    assert response["error"]["code"] == -32602
    assert response["error"]["message"] == "Invalid params"
    assert socket in response["error"]["data"]
    assert api.subscribed == []


@pytest.mark.asyncio
async def test_evi_subscribe_other_refusals(ctx: CommandContext, api: FakeApi) -> None:
    assert await call(ctx, "evi:subscribe", ["E_NOPE", "udp:127.0.0.1:9000"]) == error(
        400, "Bad parameter value", "Unknown event 'E_NOPE'"
    )
    assert await call(ctx, "evi:subscribe", ["E_CALL_HOLD", "udp:127.0.0.1:9000", -1]) == error(
        -32602, "Invalid params", "Negative expire value"
    )
    assert await call(ctx, "evi:subscribe", ["E_CALL_HOLD", "udp:127.0.0.1:9000", "soon"]) == error(
        -32602, "Invalid params", "Bad type for parameter 'expire'"
    )
    assert api.subscribed == []
