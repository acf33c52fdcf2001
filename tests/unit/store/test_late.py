"""A store that did not answer when the node started: `OpenedLater` opens it at its first
call that succeeds; the keeper serves from memory only meanwhile (`store:available` 0,
nothing written), and once the store answers restores the dialogs it held (the previous
node's calls) into the running core, then writes every confirmed dialog with the route
secret in use. An idle node pings its store to know it went away. And the route secret a
batch carries replaces the stored one."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from switchboard.store import (
    DialogKeeper,
    DialogStore,
    OpenedLater,
    SqliteStore,
    StoreBatch,
    StoreError,
    StoreUnavailable,
)
from switchboard.store import keeper as keeper_module
from tests.unit.kit.callops import Net, answer, established, only_request
from tests.unit.kit.store import NetWorker, keeper, snap


class Gate:
    """Opens the SQLite file at `path` once `up` is set; StoreUnavailable before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.up = False
        self.tries = 0

    def __call__(self, url: str) -> DialogStore:
        self.tries += 1
        if not self.up:
            raise StoreUnavailable(f"{url}: Connection refused")
        return SqliteStore(str(self.path))


def test_opened_later_raises_until_the_store_opens(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "d.sqlite")
    store = OpenedLater("redis://127.0.0.1:1/0", gate)
    with pytest.raises(StoreUnavailable, match="refused"):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    assert not store.opened
    gate.up = True
    store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    assert store.opened
    assert [s.snapshot["id"] for s in store.load()] == ["0.1"]
    store.ping()
    assert gate.tries == 3  # opened once, then used
    store.close()
    OpenedLater("redis://127.0.0.1:1/0", gate).close()  # never opened: nothing to close


def test_a_batch_route_secret_replaces_the_stored_one(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.sqlite"))
    assert store.route_secret(lambda: "old") == "old"
    store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    assert store.route_secret(lambda: "unused") == "old"  # an ordinary batch leaves it
    store.write(StoreBatch(replace=True, route_secret="new"))
    assert store.route_secret(lambda: "unused") == "new"
    assert store.load() == []
    store.close()
    batch = StoreBatch(route_secret="a")
    assert batch
    batch.merge(StoreBatch(dropped=["0.1"]))
    assert batch.route_secret == "a"
    batch.merge(StoreBatch(route_secret="b"))
    assert batch.route_secret == "b"


async def test_a_node_started_without_its_store_restores_and_writes_when_it_answers(
        tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    # The node that ran before: one confirmed call stored, with its route secret.
    before = Net()
    old_call = established(before, call_id="old@alice", caller_tag="a0", callee_tag="b0")
    previous = SqliteStore(str(path))
    previous.route_secret(lambda: "old-secret")
    # Its dialog ids began elsewhere (a node's first one is random): not 0.1 as here.
    old_snapshot = dict(old_call.dialog.snapshot(before.now), id="0.ff0001")
    previous.write(StoreBatch(put=[(old_snapshot, 1000.0, None)]))
    previous.close()

    # This node starts while the store does not answer; a call is confirmed, another ends.
    net = Net()
    gate = Gate(path)
    keep = keeper(net, OpenedLater("redis://127.0.0.1:1/0", gate), route_secret="new-secret")
    keep.wait_for_store()
    assert keep.statistics()["store:available"] == 0
    new_call = established(net, call_id="new@alice", caller_tag="a1", callee_tag="b1")
    short = established(net, call_id="short@alice", caller_tag="a2", callee_tag="b2")
    await keep.flush()
    bye = only_request(net.send(short.request("caller", "BYE"), short.caller), short.callee)
    net.send(answer(bye, 200, "OK"), short.callee)
    await keep.flush()
    assert net.proxy.dialogs.by_call_id(old_call.call_id) is None
    stats = keep.statistics()
    assert (stats["store:available"], stats["store:writes"], stats["store:write_failures"]) \
        == (0, 0, 0)
    assert net.proxy.replication.dirty == set()  # nothing piles up meanwhile

    gate.up = True
    await keep.flush()
    stats = keep.statistics()
    assert (stats["store:available"], stats["store:writes"], stats["store:restored_dialogs"]) \
        == (1, 1, 1)
    restored = net.proxy.dialogs.by_call_id(old_call.call_id)
    assert restored is not None and restored.id == "0.ff0001"
    check = SqliteStore(str(path))
    stored = {s.snapshot["call_id"]: s.snapshot for s in check.load()}
    assert sorted(stored) == ["new@alice", "old@alice"]
    assert stored["new@alice"] == new_call.dialog.snapshot(net.now)
    assert check.route_secret(lambda: "unused") == "new-secret"
    check.close()

    # From here on, ordinary writes: the restored call's end is written too.
    bye = only_request(net.send(old_call.request("caller", "BYE"), old_call.caller),
                       old_call.callee)
    net.send(answer(bye, 200, "OK"), old_call.callee)
    await keep.flush()
    check = SqliteStore(str(path))
    assert [s.snapshot["call_id"] for s in check.load()] == ["new@alice"]
    check.close()
    await keep.close()


async def test_a_store_that_answers_but_cannot_be_read_stays_unavailable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(Gate):
        def __call__(self, url: str) -> DialogStore:
            raise StoreError(f"{url}: a dialog store of format '99', this version reads '1'")

    net = Net()
    keep = keeper(net, OpenedLater("redis://127.0.0.1:1/0", Refusing(tmp_path / "x")),
                  route_secret="s")
    keep.wait_for_store()
    established(net)
    caplog.set_level(logging.ERROR, logger="switchboard.store")
    for _ in range(3):
        await keep.flush()
    assert keep.statistics()["store:available"] == 0
    assert keep.statistics()["store:restored_dialogs"] == 0
    assert [r.getMessage() for r in caplog.records] == [
        "dialog store: it cannot be used: redis://127.0.0.1:1/0: a dialog store of format "
        "'99', this version reads '1'"]
    await keep.close()


async def test_an_idle_node_notices_its_store_gone_and_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With nothing to write, the keeper pings the store (every `IDLE_LOOK` s): a store
    that went away shows as `store:available` 0 without a write failing, and gets every
    confirmed dialog when it answers again."""
    monkeypatch.setattr(keeper_module, "IDLE_LOOK", 0.0)

    class Pinged:
        def __init__(self) -> None:
            self.down = False
            self.batches: list[StoreBatch] = []

        def write(self, batch: StoreBatch) -> None:
            self.batches.append(batch)

        def ping(self) -> None:
            if self.down:
                raise StoreUnavailable("redis://127.0.0.1:1/0: Timeout reading from socket")

        def close(self) -> None:
            pass

    net = Net()
    store = Pinged()
    keep = keeper(net, store, route_secret="s")
    call = established(net)
    await keep.flush()
    await keep.flush()  # idle: a ping
    assert keep.statistics()["store:available"] == 1
    store.down = True
    caplog.set_level(logging.ERROR, logger="switchboard.store")
    await keep.flush()
    await keep.flush()
    stats = keep.statistics()
    assert (stats["store:available"], stats["store:write_failures"]) == (0, 0)
    assert len(caplog.records) == 1 and "does not answer" in caplog.records[0].getMessage()
    store.down = False
    await keep.flush()
    assert keep.statistics()["store:available"] == 1
    catch_up = store.batches[-1]
    assert catch_up.replace and catch_up.route_secret == "s"
    assert [s["call_id"] for s, _, _ in catch_up.put] == [call.call_id]
    await keep.close()


async def test_a_call_confirmed_while_the_store_is_asked_is_deleted_when_it_ends() -> None:
    """A catch-up waits for the store's answer (a hung Redis: seconds); a call confirmed
    meanwhile is in the whole state written then, and its end must be written too, or the
    store keeps it for ever (and a restart brings it back)."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def __init__(self) -> None:
            self.down = True
            self.batches: list[StoreBatch] = []

        def write(self, batch: StoreBatch) -> None:
            if self.down:
                raise StoreUnavailable("redis://127.0.0.1:1/0: Timeout reading from socket")
            self.batches.append(batch)

        def ping(self) -> None:
            entered.set()
            release.wait(5)

        def close(self) -> None:
            pass

    net = Net()
    store = Slow()
    keep = keeper(net, store)
    established(net)
    await keep.flush()  # fails: the next one is a catch-up
    store.down = False
    flushing = asyncio.get_running_loop().create_task(keep.flush())
    while not entered.is_set():
        await asyncio.sleep(0.01)
    late = established(net, call_id="late@alice", caller_tag="a9", callee_tag="b9")
    late_id = late.dialog.id
    release.set()
    await flushing
    assert store.batches[-1].replace
    assert late.call_id in [s["call_id"] for s, _, _ in store.batches[-1].put]
    bye = only_request(net.send(late.request("caller", "BYE"), late.caller), late.callee)
    net.send(answer(bye, 200, "OK"), late.callee)
    await keep.flush()
    assert store.batches[-1].dropped == [late_id]
    await keep.close()


async def test_a_catch_up_the_store_refuses_is_tried_again_later_and_later() -> None:
    """A store that answers its ping but refuses the write (a full disk): the catch-up —
    every confirmed dialog, snapshotted on the loop — is tried again after the interval,
    then twice as long each time up to `CATCH_UP_BACKOFF`, and at once in the normal
    rhythm again once one succeeded."""
    now = [0.0]

    class Full:
        def __init__(self) -> None:
            self.full = True
            self.tried: list[tuple[float, bool]] = []  # (when, a catch-up)

        def write(self, batch: StoreBatch) -> None:
            self.tried.append((now[0], batch.replace))
            if self.full:
                raise StoreError("d.sqlite: database or disk is full")

        def ping(self) -> None:
            pass

        def close(self) -> None:
            pass

    net = Net()
    store = Full()
    keep = DialogKeeper(store, NetWorker(net), 0.5, clock=lambda: 1000.0,  # type: ignore[arg-type]
                        monotonic=lambda: now[0])
    established(net)
    while now[0] < 40.0:
        await keep.flush()
        now[0] += 0.5
    assert store.tried[0] == (0.0, False)
    assert [when for when, replace in store.tried[1:] if replace] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 26.0, 36.0]
    assert keep.statistics()["store:available"] == 0
    store.full = False
    while now[0] < 50.0:  # the next catch-up, at 46 s, succeeds
        await keep.flush()
        now[0] += 0.5
    assert store.tried[-1] == (46.0, True)
    assert keep.statistics()["store:available"] == 1
    await keep.close()


async def test_a_late_restore_and_its_catch_up_go_some_dialogs_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a running node the restore and the whole state's snapshots are taken `CHUNK`
    dialogs at a time, messages going on in between: what is restored and written is all
    of it all the same."""
    monkeypatch.setattr(keeper_module, "CHUNK", 2)
    path = tmp_path / "d.sqlite"
    before = Net()
    template = established(before).dialog.snapshot(before.now)
    previous = SqliteStore(str(path))
    previous.write(StoreBatch(put=[(dict(template, id=f"0.ff00{i:02x}", call_id=f"old-{i}"),
                                    1000.0, None) for i in range(5)]))
    previous.close()

    net = Net()
    gate = Gate(path)
    keep = keeper(net, OpenedLater("redis://127.0.0.1:1/0", gate))
    keep.wait_for_store()
    calls = [established(net, call_id=f"new-{i}", caller_tag=f"a{i}", callee_tag=f"b{i}")
             for i in range(3)]
    gate.up = True
    await keep.flush()
    assert keep.statistics()["store:restored_dialogs"] == 5
    assert sorted(d.call_id for d in net.proxy.dialogs) == sorted(
        [f"old-{i}" for i in range(5)] + [c.call_id for c in calls])
    check = SqliteStore(str(path))
    assert sorted(s.snapshot["call_id"] for s in check.load()) == sorted(
        [f"old-{i}" for i in range(5)] + [c.call_id for c in calls])
    check.close()
    await keep.close()
