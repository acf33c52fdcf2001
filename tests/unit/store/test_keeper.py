"""The dialog keeper between a proxy core and a store: what goes into a batch (snapshots of
confirmed dialogs, the transfer each has in flight, ended dialogs), a failed write kept for
the next one, and stored dialogs brought back into a fresh core, a transfer that was in
flight reported failed."""

from __future__ import annotations

from pathlib import Path

from switchboard.sip.replication import RESTORABLE
from switchboard.store import DialogKeeper, SqliteStore, StoreBatch, StoredDialog, StoreError
from switchboard.store.keeper import RESTARTED
from tests.unit.kit.callops import CAROL_URI, Call, Net, answer, established, only_request
from tests.unit.kit.store import keeper


def on_disk(tmp_path: Path) -> tuple[Net, SqliteStore, DialogKeeper]:
    """A fresh core and a keeper over the SQLite file in `tmp_path` (a restart opens it again)."""
    net = Net()
    store = SqliteStore(str(tmp_path / "d.sqlite"))
    return net, store, keeper(net, store)


def row(store: SqliteStore, call: Call) -> StoredDialog | None:
    found = [s for s in store.load() if s.snapshot["call_id"] == call.call_id]
    return found[0] if found else None


async def test_a_confirmed_call_and_its_transfer_are_stored_then_its_end(tmp_path: Path) -> None:
    net, store, keep = on_disk(tmp_path)
    call = established(net)
    await keep.flush()
    stored = row(store, call)
    assert stored is not None and stored.transfer is None and stored.taken == 1000.0
    assert stored.snapshot == call.dialog.snapshot(net.now)

    net.callops.transfer(call.call_id, "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), call.caller)
    await keep.flush()
    stored = row(store, call)
    assert stored is not None and stored.transfer == ("caller", "", CAROL_URI)

    # Declined: the transfer is over, and the stored row says so.
    net.send(answer(refer, 603, "Decline"), call.caller)
    await keep.flush()
    stored = row(store, call)
    assert stored is not None and stored.transfer is None

    bye = only_request(net.send(call.request("caller", "BYE"), call.caller), call.callee)
    net.send(answer(bye, 200, "OK"), call.callee)
    assert not call.dialog.active
    await keep.flush()
    assert row(store, call) is None
    assert keep.statistics()["store:writes"] == 4
    await keep.close()


async def test_nothing_is_written_when_nothing_changed(tmp_path: Path) -> None:
    writes: list[StoreBatch] = []

    class Recording:
        def write(self, batch: StoreBatch) -> None:
            writes.append(batch)

        def close(self) -> None:
            pass

    net = Net()
    keep = keeper(net, Recording())
    established(net)
    await keep.flush()
    await keep.flush()
    assert [len(b.put) for b in writes] == [1]
    await keep.close()


async def test_a_failed_write_is_merged_into_the_next() -> None:
    written: list[StoreBatch] = []
    failing = [True]

    class Flaky:
        def write(self, batch: StoreBatch) -> None:
            if failing[0]:
                failing[0] = False
                raise StoreError("disk full")
            written.append(batch)

        def ping(self) -> None:
            pass

        def close(self) -> None:
            pass

    net = Net()
    keep = keeper(net, Flaky())
    first = established(net)
    await keep.flush()
    second = established(net, call_id="call-2@alice", caller_tag="a2", callee_tag="b2")
    await keep.flush()
    assert [s["call_id"] for s, _, _ in written[0].put] == [first.call_id, second.call_id]
    stats = keep.statistics()
    assert (stats["store:write_failures"], stats["store:writes"]) == (1, 1)
    await keep.close()


async def test_stored_calls_come_back_and_a_transfer_in_flight_fails(tmp_path: Path) -> None:
    net, store, keep = on_disk(tmp_path)
    call = established(net)
    other = established(net, call_id="call-2@alice", caller_tag="a2", callee_tag="b2")
    net.callops.transfer(call.call_id, "caller", CAROL_URI, net.now)
    net.take()
    await keep.flush()
    await keep.close()  # the process goes away

    fresh, store, keep = on_disk(tmp_path)
    assert keep.restore(store.load()) == 2
    for c in (call, other):
        dialog = fresh.proxy.dialogs.by_call_id(c.call_id)
        assert dialog is not None and dialog.state in RESTORABLE
        assert dialog.id == c.dialog.id
    [failed] = [e for e in fresh.events() if e.name == "E_CALL_TRANSFER"]
    assert failed.params["callid"] == call.call_id
    assert (failed.params["state"], failed.params["status"]) == ("fail", RESTARTED)
    assert failed.params["destination"] == CAROL_URI
    await keep.flush()
    stored = row(store, call)
    assert stored is not None and stored.transfer is None
    await keep.close()


async def test_a_stored_dialog_that_does_not_come_back_is_deleted(tmp_path: Path) -> None:
    net, store, keep = on_disk(tmp_path)
    call = established(net)
    await keep.flush()
    snapshot = store.load()[0].snapshot
    bad = dict(snapshot, id="7.1", call_id="elsewhere")  # another worker's
    keep.restore([StoredDialog(snapshot, 1000.0), StoredDialog(bad, 1000.0)])  # here already
    await keep.flush()
    assert [s.snapshot["id"] for s in store.load()] == []
    assert call.dialog.active
    await keep.close()
