"""The redis dialog store against a real redis-server: batches in, dialogs out, the route
secret kept, another format refused; and the keeper over it when Redis goes away (memory
only, one log line, `store:available` 0) and comes back empty (every confirmed dialog and
the route secret written again)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.store import StoreBatch, StoreError, open_store
from switchboard.store.redisdb import META, RedisStore, dialog_key
from tests.support.redis_server import RedisServer
from tests.unit.kit.callops import CAROL_URI, Net, answer, established, only_request
from tests.unit.kit.store import assert_two_batches_read_back, keeper, snap

pytestmark = [pytest.mark.redis]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    try:
        yield srv
    finally:
        srv.close()


def test_a_batch_is_read_back_after_reopening(server: RedisServer) -> None:
    store = open_store(server.url)
    assert isinstance(store, RedisStore)
    store.write(StoreBatch(put=[(snap("0.1"), 10.0, None),
                                (snap("0.2"), 10.5, ("caller", "", "sip:c@example.com"))]))
    store.write(StoreBatch(put=[(snap("0.3", b"\xff"), 11.0, None)],
                           transfers=[("0.2", None), ("0.1", ("callee", "x", "sip:d@x")),
                                      ("0.9", ("caller", "", "sip:gone@x"))],
                           dropped=["0.3"]))
    store.close()
    again = RedisStore(server.url)
    assert_two_batches_read_back(again)
    # A transfer state for a dialog never stored (or deleted) leaves no key behind.
    assert not server.client().exists(dialog_key("0.9"), dialog_key("0.3"))
    again.write(StoreBatch(put=[(snap("0.4"), 12.0, None)], replace=True))
    assert [s.snapshot["id"] for s in again.load()] == ["0.4"]
    assert len(again) == 1
    again.clear()
    assert again.load() == []
    assert server.client().keys("switchboard:dialog*") == []
    again.close()


def test_the_route_secret_is_generated_once_and_a_bad_row_left_out(
        server: RedisServer) -> None:
    store = RedisStore(server.url)
    assert store.route_secret(lambda: "first") == "first"
    store.clear()  # dialogs only
    assert RedisStore(server.url).route_secret(lambda: "second") == "first"
    store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    client = server.client()
    client.hset(dialog_key("0.2"), mapping={"snapshot": b"\xc1", "taken": "1.0"})
    client.sadd("switchboard:dialogs", "0.2")
    assert [s.snapshot["id"] for s in store.load()] == ["0.1"]
    store.close()


def test_another_format_an_unreachable_server_or_a_bad_url_is_refused(
        server: RedisServer) -> None:
    server.client().hset(META, "format", "99")
    with pytest.raises(StoreError, match="format"):
        RedisStore(server.url)
    server.kill()
    with pytest.raises(StoreError, match=str(server.port)):
        open_store(server.url)
    for url in ("redis://", "redis://127.0.0.1:x/0", "redis://127.0.0.1:6379/zero"):
        with pytest.raises(StoreError, match="expected"):
            open_store(url)


async def test_redis_down_memory_only_then_a_catch_up_when_it_returns(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    net = Net()
    store = RedisStore(server.url)
    store.route_secret(lambda: "kept")
    keep = keeper(net, store, route_secret="kept")
    first = established(net)
    await keep.flush()
    assert [s.snapshot["call_id"] for s in store.load()] == [first.call_id]
    assert keep.statistics()["store:available"] == 1

    server.kill()
    caplog.set_level(logging.WARNING, logger="switchboard.store")
    second = established(net, call_id="call-2@alice", caller_tag="a2", callee_tag="b2")
    for _ in range(3):
        await keep.flush()
    # Changes go on while it is away: a transfer starts on the first call, a third call
    # is confirmed and ends.
    net.callops.transfer(first.call_id, "caller", CAROL_URI, net.now)
    only_request(net.take(), first.caller)
    third = established(net, call_id="call-3@alice", caller_tag="a3", callee_tag="b3")
    await keep.flush()
    bye = only_request(net.send(third.request("caller", "BYE"), third.caller), third.callee)
    net.send(answer(bye, 200, "OK"), third.callee)
    await keep.flush()
    stats = keep.statistics()
    assert stats["store:available"] == 0
    assert stats["store:write_failures"] == 1  # one write failed; then only looks at it
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert net.proxy.replication.dirty == set()  # nothing piles up in the core meanwhile

    server.start()  # empty: Redis kept nothing
    await keep.flush()
    assert keep.statistics()["store:available"] == 1
    loaded = {s.snapshot["call_id"]: s for s in RedisStore(server.url).load()}
    assert sorted(loaded) == sorted([first.call_id, second.call_id])
    assert loaded[first.call_id].transfer == ("caller", "", CAROL_URI)
    assert loaded[second.call_id].snapshot == second.dialog.snapshot(net.now)
    assert RedisStore(server.url).route_secret(lambda: "new") == "kept"
    assert any("available again" in r.getMessage() for r in caplog.records)
    await keep.close()
