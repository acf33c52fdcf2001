"""The redis dialog store's fencing, against a real redis-server: a batch written after
another store object took the database over is refused, and a write that timed out on a
hung (SIGSTOPped) Redis is not applied after the catch-up that followed it, whatever order
Redis reads its connections in when it wakes up."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.store import StoreBatch, StoreError, StoreUnavailable
from switchboard.store.redisdb import RedisStore
from tests.support.redis_server import RedisServer
from tests.unit.kit.store import snap

pytestmark = [pytest.mark.redis]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.proc.send_signal(signal.SIGCONT)
        srv.close()


def ids(store: RedisStore) -> list[str]:
    return sorted(str(s.snapshot["id"]) for s in store.load())


def test_a_store_taken_over_refuses_to_write(server: RedisServer) -> None:
    first = RedisStore(server.url)
    first.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    second = RedisStore(server.url)  # a restarted node, say
    second.write(StoreBatch(put=[(snap("0.2"), 2.0, None)], replace=True))
    with pytest.raises(StoreError, match="another store object"):
        first.write(StoreBatch(put=[(snap("0.3"), 3.0, None)], dropped=["0.2"]))
    assert ids(second) == ["0.2"]
    second.write(StoreBatch(put=[(snap("0.4"), 4.0, None)]))
    assert ids(second) == ["0.2", "0.4"]
    # A batch that replaces the state takes the database back (the keeper's catch-up).
    first.write(StoreBatch(put=[(snap("0.5"), 5.0, None)], replace=True))
    with pytest.raises(StoreError):
        second.write(StoreBatch(dropped=["0.5"]))
    assert ids(first) == ["0.5"]
    first.close()
    second.close()


def test_a_write_that_timed_out_in_a_hung_redis_is_not_applied_later(
        server: RedisServer) -> None:
    store = RedisStore(server.url)
    store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):  # 0.1 ended meanwhile
            store.write(StoreBatch(put=[(snap("0.2"), 2.0, None)], dropped=["0.1"]))
        # The catch-up is on its way while Redis still sleeps: when it wakes up it reads
        # this one and what the timed-out write left in its sockets, in an order of its own.
        failed: list[BaseException] = []

        def catch_up() -> None:
            try:
                store.write(StoreBatch(put=[(snap("0.3"), 3.0, None)], replace=True))
            except BaseException as exc:  # reported below
                failed.append(exc)

        thread = threading.Thread(target=catch_up)
        thread.start()
        time.sleep(0.3)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    thread.join(10)
    assert not failed, failed
    time.sleep(0.2)  # whatever else Redis had to read
    assert ids(store) == ["0.3"]
    store.write(StoreBatch(put=[(snap("0.4"), 4.0, None)]))
    assert ids(store) == ["0.3", "0.4"]
    store.close()
