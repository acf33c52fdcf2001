"""The REST API of the `local` runtime takes the node's events in process: a stream client
gets what the event bus publishes, yet nothing listens on a socket for them (no process of
the host could write events in) and `evi:subscribers` shows nothing; the console's message
capture is the node's own (`ControlApi.capture`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from switchboard.cluster.local import LocalSwitchboard
from switchboard.config import Config, HostPort, ListenConfig, ListenSocket, MIConfig

HOST = "127.0.0.1"


@pytest.fixture
async def node() -> AsyncIterator[LocalSwitchboard]:
    sb = LocalSwitchboard(Config(listen=ListenConfig(sockets=(ListenSocket("udp", HOST, 0),)),
                                 mi=MIConfig(http=HostPort(HOST, 0))))
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()


async def test_events_reach_the_stream_with_no_socket_in_between(
        node: LocalSwitchboard, monkeypatch: pytest.MonkeyPatch) -> None:
    listeners: list[Any] = []
    real_start_server = asyncio.start_server

    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        listeners.append((args, kwargs))
        return await real_start_server(*args, **kwargs)

    monkeypatch.setattr(asyncio, "start_server", start_server)
    assert node.mi is not None and node.events is not None
    base = f"http://{HOST}:{node.mi.port}"
    async with aiohttp.ClientSession(base_url=base) as http:
        async with http.get("/api/v1/events", params={"call": "c1"}) as stream:
            assert stream.status == 200
            assert await stream.content.readline() == b": switchboard events\n"
            await stream.content.readline()
            params = {"callid": "c1", "leg": "caller", "action": "hold", "state": "start"}
            node.events.publish("E_CALL_HOLD", params)
            lines = [await stream.content.readline() for _ in range(3)]
        assert lines[1] == b"event: E_CALL_HOLD\n"
        assert json.loads(lines[2].removeprefix(b"data: "))["params"] == params
        async with http.get("/api/v1/capture") as r:
            assert r.status == 200  # the node's capture is in this process
        assert node.capture() is node.capture()
    assert listeners == []
    assert node.events.subscriptions() == []
    assert (await node.statistics())["evi:subscriptions"] == 0
