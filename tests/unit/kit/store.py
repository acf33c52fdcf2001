"""What the dialog-store tests share: a snapshot-shaped row to write, and a `DialogKeeper` over
the kit's `Net` (its proxy, call operations and fake clock) in place of a worker."""

from __future__ import annotations

from typing import Any

from switchboard.store import DialogKeeper, DialogStore
from tests.unit.kit.callops import Net


def snap(dialog_id: str, sdp: bytes = b"v=0\r\n") -> dict[str, object]:
    """A stored snapshot: bytes and a tag that is not UTF-8, which a store must keep as they are."""
    return {"v": 1, "id": dialog_id, "call_id": f"call-{dialog_id}", "sdp": sdp,
            "caller": {"tag": "a\udcff"}}


class NetWorker:
    """What the keeper uses of a worker, over the kit's proxy and clock."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.proxy = net.proxy
        self.callops = net.callops

    def now(self) -> float:
        return self.net.now

    def flush(self) -> None:
        pass


def keeper(net: Net, store: Any, route_secret: str = "") -> DialogKeeper:
    """A keeper writing every 50 ms, its wall clock fixed at 1000.0 (the `taken` of each row)."""
    return DialogKeeper(store, NetWorker(net), 0.05, clock=lambda: 1000.0,  # type: ignore[arg-type]
                        route_secret=route_secret)


def assert_two_batches_read_back(store: DialogStore) -> None:
    """What a store reopened after the tests' two batches holds: 0.1 and 0.2 as written (0.3
    put then dropped), 0.1 with the transfer the second batch gave it, 0.2 with its cleared."""
    loaded = {s.snapshot["id"]: s for s in store.load()}
    assert sorted(loaded) == ["0.1", "0.2"]
    assert loaded["0.1"].snapshot == snap("0.1")  # bytes and non-UTF-8 tags as they were
    assert loaded["0.1"].taken == 10.0
    assert loaded["0.1"].transfer == ("callee", "x", "sip:d@x")
    assert loaded["0.2"].transfer is None
