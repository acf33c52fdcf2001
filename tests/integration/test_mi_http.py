"""The MI HTTP server on a real socket, driven by raw HTTP, by the `opensips` package's own MI
client (a third-party peer), and by the `switchboard mi` command line."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from opensips.mi import OpenSIPSMI, OpenSIPSMIException

from switchboard.cli import build_params, main
from switchboard.mi.client import MIClientError, MIConnectionError, call
from switchboard.mi.http import MIServer, start_mi_server
from tests.support.fake_api import FakeApi

REPO = Path(__file__).resolve().parents[2]

DIALOG = {
    "ID": "3a1.5f2",
    "db_id": "123",
    "state": 4,
    "callid": "call-a",
    "from_uri": "sip:alice@example.com",
    "to_uri": "sip:bob@example.com",
    "caller_tag": "ta",
    "CALLEES": [{"callee_tag": "tb"}],
}


@pytest.fixture
def api() -> FakeApi:
    stats = {"dialog:active_dialogs": 1, "dialog:early_dialogs": 0, "tm:UAS_transactions": 5}
    return FakeApi([DIALOG], stats, uptime=3.0, started_at=1_700_000_000.0)


@pytest.fixture
async def server(api: FakeApi) -> AsyncIterator[MIServer]:
    mi = await start_mi_server(api, "127.0.0.1", 0)
    yield mi
    await mi.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, **kwargs: Any
) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    async with http.post(url, data=data, headers=headers, **kwargs) as response:
        return response.status, await response.read()


# --- raw HTTP ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_server_binds_a_free_port(server: MIServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/mi"


@pytest.mark.asyncio
async def test_results_and_errors_are_all_http_200(
    server: MIServer, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, server.url, {"jsonrpc": "2.0", "id": "1", "method": "uptime"})
    assert status == 200
    reply = json.loads(body)
    assert reply["id"] == "1"
    assert reply["result"]["Up time"] == "3 [sec]"

    status, body = await post(http, server.url, {"jsonrpc": "2.0", "id": 2, "method": "nope"})
    assert (status, json.loads(body)) == (
        200,
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 2},
    )

    status, body = await post(http, server.url, b"{not json")
    assert (status, json.loads(body)) == (
        200,
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    )

    status, body = await post(
        http, server.url, {"jsonrpc": "2.0", "id": 3, "method": "dialog:end_dlg", "params": ["x"]}
    )
    assert (status, json.loads(body)["error"]) == (
        200,
        {"code": 404, "message": "Dialog not found"},
    )


@pytest.mark.asyncio
async def test_response_content_type(server: MIServer, http: aiohttp.ClientSession) -> None:
    async with http.post(
        server.url, json={"jsonrpc": "2.0", "id": 1, "method": "version"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"


@pytest.mark.asyncio
async def test_notification_is_202_without_body(
    server: MIServer, http: aiohttp.ClientSession, api: FakeApi
) -> None:
    status, body = await post(
        http,
        server.url,
        {"jsonrpc": "2.0", "method": "evi:subscribe", "params": ["E_CALL_HOLD", "udp:127.0.0.1:9"]},
    )
    assert (status, body) == (202, b"")
    assert api.subscribed == [("E_CALL_HOLD", "udp:127.0.0.1:9", 3600)]


@pytest.mark.asyncio
async def test_other_methods_and_paths(server: MIServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url) as response:
        assert response.status == 405
    async with http.put(server.url, data=b"{}") as response:
        assert response.status == 405
    status, _ = await post(
        http, server.url.replace("/mi", "/other"), {"jsonrpc": "2.0", "id": 1, "method": "which"}
    )
    assert status == 404


@pytest.mark.asyncio
async def test_bearer_token(api: FakeApi, http: aiohttp.ClientSession) -> None:
    mi = await start_mi_server(api, "127.0.0.1", 0, root="/ctl/", token="s3cret")
    try:
        assert mi.url.endswith("/ctl")
        request = {"jsonrpc": "2.0", "id": 1, "method": "version"}
        status, _ = await post(http, mi.url, request)
        assert status == 401
        status, _ = await post(http, mi.url, request, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = await post(http, mi.url, request, headers={"Authorization": "Basic s3cret"})
        assert status == 401
        status, body = await post(http, mi.url, request, headers={"Authorization": "Bearer s3cret"})
        assert status == 200
        assert "Server" in json.loads(body)["result"]
    finally:
        await mi.close()


@pytest.mark.asyncio
async def test_concurrent_requests(server: MIServer, http: aiohttp.ClientSession) -> None:
    replies = await asyncio.gather(
        *(
            post(http, server.url, {"jsonrpc": "2.0", "id": n, "method": "dlg_list"})
            for n in range(20)
        )
    )
    assert [json.loads(body)["id"] for _, body in replies] == list(range(20))


# --- the opensips package's MI client (third-party peer) ---------------------------------------


def _opensips(url: str) -> OpenSIPSMI:
    return OpenSIPSMI(conn="http", url=url)


@pytest.mark.asyncio
async def test_opensips_client_which(server: MIServer) -> None:
    mi = _opensips(server.url)
    names = await asyncio.to_thread(mi.execute, "which")
    assert "dialog:list" in names and "dlg_list" in names
    recipes = await asyncio.to_thread(mi.execute, "which", {"command": "dialog:list"})
    assert recipes == [[], ["callid"], ["callid", "from_tag"]]


@pytest.mark.asyncio
async def test_opensips_client_dialog_list(server: MIServer) -> None:
    mi = _opensips(server.url)
    # The client sends "params": {} when given none; that must match the empty recipe.
    assert await asyncio.to_thread(mi.execute, "dialog:list") == {"Dialogs": [DIALOG]}
    assert await asyncio.to_thread(mi.execute, "dlg_list") == {"Dialogs": [DIALOG]}
    assert await asyncio.to_thread(mi.execute, "dlg_list", {"callid": "call-a"}) == {
        "Dialog": DIALOG
    }
    assert await asyncio.to_thread(mi.execute, "dialog:list", ["call-a", "ta"]) == {
        "Dialog": DIALOG
    }


@pytest.mark.asyncio
async def test_opensips_client_sees_json_rpc_errors(server: MIServer) -> None:
    mi = _opensips(server.url)
    with pytest.raises(OpenSIPSMIException, match="404: Dialog not found"):
        await asyncio.to_thread(mi.execute, "dlg_list", {"callid": "nope"})
    with pytest.raises(OpenSIPSMIException, match="Too few or too many parameters"):
        await asyncio.to_thread(mi.execute, "dialog:end_dlg")


@pytest.mark.asyncio
async def test_opensips_client_event_subscribe(server: MIServer, api: FakeApi) -> None:
    # The shape python-opensips' event handler uses: event_subscribe [event, socket, expire].
    mi = _opensips(server.url)
    reply = await asyncio.to_thread(
        mi.execute, "event_subscribe", ["E_DLG_STATE_CHANGED", "udp:127.0.0.1:50000", 120]
    )
    assert reply == "OK"
    assert api.subscribed == [("E_DLG_STATE_CHANGED", "udp:127.0.0.1:50000", 120)]


# --- our own client and the `switchboard mi` command line --------------------------------------


@pytest.mark.asyncio
async def test_client_call(server: MIServer) -> None:
    assert await asyncio.to_thread(call, server.url, "dlg_list", ["call-a"]) == {"Dialog": DIALOG}
    with pytest.raises(MIClientError) as err:
        await asyncio.to_thread(call, server.url, "dlg_list", {"callid": "x"})
    assert (err.value.code, err.value.message, err.value.data) == (404, "Dialog not found", None)
    with pytest.raises(MIConnectionError):
        await asyncio.to_thread(call, server.url.replace("/mi", "/nope"), "which")
    with pytest.raises(MIConnectionError):
        call("file:///etc/passwd", "which")


def test_client_connection_refused() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MIConnectionError, match="cannot reach"):
        call(f"http://127.0.0.1:{port}/mi", "which", timeout=2.0)


async def run_cli(*args: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


@pytest.mark.asyncio
async def test_cli_prints_the_result(server: MIServer) -> None:
    result = await run_cli("mi", "--url", server.url, "which")
    assert result.exit_code == 0, result.output
    assert "dlg_end_dlg" in json.loads(result.stdout)

    result = await run_cli("mi", "--url", server.url, "dlg_list", "call-a", "ta")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"Dialog": DIALOG}
    # Indented output, like opensips-cli's pretty-print.
    assert result.stdout.startswith('{\n    "Dialog"')

    result = await run_cli("mi", "--url", server.url, "dialog:list", "callid=call-a")
    assert json.loads(result.stdout) == {"Dialog": DIALOG}


@pytest.mark.asyncio
async def test_cli_array_parameter_rule(server: MIServer) -> None:
    result = await run_cli("mi", "--url", server.url, "get_statistics", "dialog:", "tm:")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "dialog:active_dialogs": 1,
        "dialog:early_dialogs": 0,
        "tm:UAS_transactions": 5,
    }
    result = await run_cli(
        "mi", "--url", server.url, "statistics:get", "statistics=active_dialogs tm:"
    )
    assert json.loads(result.stdout) == {"dialog:active_dialogs": 1, "tm:UAS_transactions": 5}


@pytest.mark.asyncio
async def test_cli_json_values(server: MIServer, api: FakeApi) -> None:
    result = await run_cli(
        "mi",
        "--url",
        server.url,
        "-j",
        "evi:subscribe",
        "event=E_CALL_HOLD",
        "socket=udp:127.0.0.1:9",
        "expire=60",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == "OK"
    assert api.subscribed == [("E_CALL_HOLD", "udp:127.0.0.1:9", 60)]


@pytest.mark.asyncio
async def test_cli_error_goes_to_stderr_with_exit_1(server: MIServer) -> None:
    result = await run_cli("mi", "--url", server.url, "dialog:end_dlg", "dialog_id=nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert json.loads(result.stderr) == {"code": 404, "message": "Dialog not found"}

    result = await run_cli("mi", "--url", server.url, "dialog:end_dlg", "a", "b", "c")
    assert result.exit_code == 1
    assert json.loads(result.stderr) == {
        "code": -32602,
        "message": "Invalid params",
        "data": "Too few or too many parameters",
    }


@pytest.mark.asyncio
async def test_cli_token(api: FakeApi) -> None:
    mi = await start_mi_server(api, "127.0.0.1", 0, token="t0k")
    try:
        result = await run_cli("mi", "--url", mi.url, "version")
        assert result.exit_code == 2
        assert "401" in result.stderr
        result = await run_cli("mi", "--url", mi.url, "--token", "t0k", "version")
        assert result.exit_code == 0, result.output
    finally:
        await mi.close()


@pytest.mark.asyncio
async def test_python_dash_m_switchboard_mi(server: MIServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchboard",
        "mi",
        "--url",
        server.url,
        "uptime",
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["Up time"] == "3 [sec]"


# --- argument rule (opensips-cli) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "as_json", "expected"),
    [
        ("which", [], False, None),
        ("dlg_list", ["abc"], False, ["abc"]),
        ("dlg_list", ["callid=abc", "from_tag=x=y"], False, {"callid": "abc", "from_tag": "x=y"}),
        # One argument that is not name=value makes them all positional.
        ("dlg_list", ["callid=abc", "tag"], False, ["callid=abc", "tag"]),
        ("evi:subscribe", ["E_X", "udp:1.2.3.4:5", "60"], False, ["E_X", "udp:1.2.3.4:5", "60"]),
        ("evi:subscribe", ["E_X", "udp:1.2.3.4:5", "60"], True, ["E_X", "udp:1.2.3.4:5", 60]),
        ("x", ['a=[1, "b"]', "b={}", "c=text"], True, {"a": [1, "b"], "b": {}, "c": "text"}),
        ("get_statistics", ["all"], False, [["all"]]),
        ("statistics:get", ["statistics=dialog: tm:"], False, {"statistics": ["dialog:", "tm:"]}),
        ("statistics:get", ['statistics=["all"]'], True, {"statistics": ["all"]}),
        ("statistics:get", ['["all"]'], True, [["all"]]),
    ],
)
def test_build_params(command: str, args: list[str], as_json: bool, expected: Any) -> None:
    assert build_params(command, args, as_json=as_json) == expected


# --- `switchboard serve` end to end ------------------------------------------------------------


def test_serve_logs_one_ready_line_serves_the_mi_and_stops_on_sigterm(switchboard: Any) -> None:
    # `switchboard` is the conftest fixture: `python -m switchboard serve` on fresh ports.
    assert len(re.findall(r"\bready\b", switchboard.output)) == 1
    assert switchboard.mi_url in switchboard.output
    assert "dlg_list" in switchboard.mi_result("which")
    proc = subprocess.run(
        [sys.executable, "-m", "switchboard", "mi", "--url", switchboard.mi_url, "dialog:list"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"Dialogs": []}
    assert switchboard.stop() == 0
    assert "stopping" in switchboard.output


def test_serve_refuses_bad_configuration_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--listen", "udp:127.0.0.1"])
    assert result.exit_code == 2
    assert "--listen: expected IP:PORT" in result.output
    config = tmp_path / "sb.toml"
    config.write_text('[mi]\nhttp = "127.0.0.1:8888"\ntokn = "x"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:3: mi.tokn: unknown key" in result.output
