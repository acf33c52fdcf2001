"""The Ray runtime with `[dialog] store = "redis://..."` on a real local Ray and a real
redis-server: every worker keeps its confirmed dialogs in Redis under its own key prefix
(`switchboard:w<i>:`), none in the controller.

- A worker killed under a held SIPp call comes back with the call from Redis: listed with
  the same id, held and ended from the MI.
- Two workers' scopes in one Redis (or beside one SQLite path) keep their dialogs apart.
- Redis killed under the Ray runtime: the worker goes on in memory only (calls still
  complete, `store:available` 0), and once Redis is back (empty) it writes every confirmed
  dialog again; the held call is then held and ended from the MI.

One service for the module (2 workers, worker i on base port + i), `serve` in this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from switchboard.store import StoreBatch, open_store
from tests.cluster.ray_service import Service, import_ray, start_service, stop_service, until
from tests.support.events import collecting
from tests.support.ports import HOST, free_port
from tests.support.redis_server import RedisServer
from tests.support.sipp import (
    Sipp,
    StartSipp,
    assert_clean,
    killed_on_failure,
    wait_caller_first,
    wait_clean,
)
from tests.unit.kit.store import snap

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop, pytest.mark.redis]

SCENARIOS = Path(__file__).parent / "scenarios"
LONG_CALL = SCENARIOS / "uac_long.xml"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def stored(ray_cluster: str, redis_server: RedisServer) -> Iterator[Service]:
    running = start_service(2, store=redis_server.url)
    try:
        yield running
    finally:
        stop_service(running)


def _controller() -> Any:
    return ray.get_actor("controller", namespace="switchboard")


def _worker_stats(worker: int) -> dict[str, int]:
    handle = ray.get(_controller().worker_handles.remote())[worker]
    return dict(msgpack.unpackb(ray.get(handle.statistics.remote(), timeout=10)))


def _stored_ids(redis_server: RedisServer, worker: int) -> set[str]:
    client = redis_server.client()
    try:
        return {i.decode() for i in client.smembers(f"switchboard:w{worker}:dialogs")}
    finally:
        client.close()


def _confirmed(service: Service, prefix: str) -> dict[str, Any] | None:
    for dialog in service.mi("dialog:list")["Dialogs"]:
        if str(dialog["callid"]).startswith(prefix) and dialog["state"] == 4:
            return dict(dialog)
    return None


def _call(sipp: StartSipp, service: Service, worker: int, prefix: str, uac: str | Path,
          uas: str | Path) -> tuple[Sipp, Sipp]:
    uas_port = free_port("udp")
    b = sipp("b", uas, local_port=uas_port, timeout=180, recv_timeout=150).wait_listening()
    a = sipp("a", uac, remote=f"{HOST}:{service.port(worker)}", local_port=free_port("udp"),
             keys={"uas_port": uas_port}, timeout=180, recv_timeout=150,
             extra_args=("-cid_str", f"{prefix}%u@%s"))
    return a, b


def test_a_killed_worker_comes_back_with_its_calls_from_redis(
    sipp: StartSipp, stored: Service, redis_server: RedisServer,
) -> None:
    controller = _controller()
    prefix = f"sb-store-kill-{time.monotonic_ns()}-"
    a, b = _call(sipp, stored, 1, prefix, SCENARIOS / "uac_held_ended.xml",
                 SCENARIOS / "uas_held_ended.xml")
    with collecting() as events, killed_on_failure(a, b):
        assert stored.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket,
                         expire=120) == "OK"
        try:
            before = until("the call confirmed", lambda: _confirmed(stored, prefix))
            callid = before["callid"]
            assert before["ID"].startswith("1.")
            until("the call in redis", lambda: before["ID"] in _stored_ids(redis_server, 1))
            # Kept by the worker in the store, not by the controller.
            assert ray.get(controller.replicated.remote(1)) == []
            restored = _worker_stats(1)["store:restored_dialogs"]

            info = ray.get(controller.workers_info.remote())
            handle = ray.get(controller.worker_handles.remote())[1]
            ray.kill(handle, no_restart=False)
            until("worker 1 restarted",
                   lambda: ray.get(controller.workers_info.remote())[1]["pid"]
                   != info[1]["pid"])
            after = until("the call listed again", lambda: _confirmed(stored, prefix))
            assert after["ID"] == before["ID"]
            assert _worker_stats(1)["store:restored_dialogs"] == restored + 1

            assert stored.mi("callops:hold", callid=callid) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                            and p["state"] == "ok", count=2)
            assert stored.mi("dialog:end_dlg", dialog_id=callid) == "OK"
        finally:
            stored.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket, expire=0)
    assert_clean(*wait_caller_first(a, b))
    until("the ended call gone from redis",
           lambda: before["ID"] not in _stored_ids(redis_server, 1))


def test_redis_down_memory_only_then_caught_up(
    sipp: StartSipp, stored: Service, redis_server: RedisServer,
) -> None:
    prefix = f"sb-store-down-{time.monotonic_ns()}-"
    a, b = _call(sipp, stored, 0, prefix, SCENARIOS / "uac_held_ended.xml",
                 SCENARIOS / "uas_held_ended.xml")
    with collecting() as events, killed_on_failure(a, b):
        held = until("the call confirmed", lambda: _confirmed(stored, prefix))
        until("the call in redis", lambda: held["ID"] in _stored_ids(redis_server, 0))
        assert _worker_stats(0)["store:available"] == 1

        redis_server.kill()
        # Calls go on in memory only: one more through the same worker, up for a second
        # (its snapshot is due while Redis is away: the write fails), answered and ended.
        uas = sipp("uas", "uas.xml", local_port=free_port("udp")).wait_listening()
        uac = sipp("uac", LONG_CALL, remote=f"{HOST}:{stored.port(0)}",
                   local_port=free_port("udp"), keys={"uas_port": uas.local_port},
                   extra_args=("-d", "1000"))
        wait_clean(uac, uas)
        stats = until("store:available 0",
                       lambda: (s := _worker_stats(0))["store:available"] == 0 and s)
        assert stats["store:write_failures"] >= 1
        # Summed over the workers: an idle worker finds the store gone too (it pings it).
        until("no worker's store available", lambda: stored.mi(
            "statistics:get", statistics=["store:available"]) == {"store:available": 0})

        redis_server.start()  # empty, as a Redis without persistence comes back
        until("store:available 1", lambda: _worker_stats(0)["store:available"] == 1)
        # Caught up: the held call is written again, with no change to it meanwhile.
        until("the call in redis again",
               lambda: held["ID"] in _stored_ids(redis_server, 0))
        assert stored.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket,
                         expire=120) == "OK"
        try:
            assert stored.mi("callops:hold", callid=held["callid"]) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == held["callid"]
                            and p["state"] == "ok", count=2)
        finally:
            stored.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket, expire=0)
        assert stored.mi("dialog:end_dlg", dialog_id=held["ID"]) == "OK"
    assert_clean(*wait_caller_first(a, b))
    until("the ended call gone from redis",
           lambda: held["ID"] not in _stored_ids(redis_server, 0))


def test_each_scope_keeps_its_own_dialogs(redis_server: RedisServer, tmp_path: Path) -> None:
    """What every worker opens (`open_store(url, "w<i>")`): the same dialog id in two scopes
    is two dialogs; a scope reads back its own only; the unscoped store (the local
    runtime's) sees neither. A sqlite store's scope is a file beside PATH."""
    for url in (redis_server.url, f"sqlite:{tmp_path / 'dialogs.db'}"):
        stores = {scope: open_store(url, scope) for scope in ("w0", "w1", "")}
        try:
            stores["w0"].write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
            stores["w1"].write(StoreBatch(put=[(snap("0.1"), 2.0, None),
                                               (snap("1.2"), 2.0, None)]))
            assert [s.taken for s in stores["w0"].load()] == [1.0]
            assert sorted(s.snapshot["id"] for s in stores["w1"].load()) == ["0.1", "1.2"]
            assert stores[""].load() == []
            stores["w1"].write(StoreBatch(replace=True))
            assert [s.snapshot["id"] for s in stores["w0"].load()] == ["0.1"]
        finally:
            for store in stores.values():
                store.close()
    assert (tmp_path / "dialogs.db.w1").is_file()
