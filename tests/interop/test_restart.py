"""Calls that outlive a restart of `switchboard serve` (local runtime, `[dialog] store =
"sqlite:PATH"` or `"redis://HOST:PORT/DB"` with a real redis-server), with SIPp as both
parties.

A calls B through the proxy; the call is held; the proxy is stopped (SIGKILL, or SIGTERM
and its drain) and started again on the same port with the same store. The call is listed
again with the same id, is unheld, transferred (A declines the REFER) and hung up by A, each
through the restarted proxy; the proxy's requests continue each party's CSeq sequence where
it was before the restart, and the BYE ends the listed dialog. Another call, whose lifetime
runs out after the restart, is ended by the restarted proxy with a BYE each way.
With Redis, one run also kills redis-server before the hold and starts it again, empty,
after it: the proxy goes on in memory only meanwhile and writes the held call again when
Redis is back, so the call survives the proxy's restart that follows. Another starts the
proxy while redis-server is down: it serves a call from memory (`store:available` 0, in
/metrics too), writes it and the route secret once redis-server is started, and a restart
on that store gets the call back.
Scenarios: scenarios/restart/ (the second test reuses uac_wait_bye.xml, uas_wait_bye.xml).
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.readout import unpack
from tests.support.events import EventCollector
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.server import (
    StartServer,
    SwitchboardServer,
    wait_confirmed,
    wait_dialogs,
)
from tests.support.sipp import SipMessage, Sipp, StartSipp, killed_on_failure, received, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


class Store:
    """A `[dialog] store`: an SQLite file, or a Redis database of a redis-server of its
    own."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.path = tmp_path / "dialogs.sqlite"
        self.redis = RedisServer(tmp_path / "redis") if kind == "redis" else None
        self.url = f"sqlite:{self.path}" if self.redis is None else self.redis.url

    def stored(self, callid: str) -> dict[str, Any] | None:
        """The snapshot the store holds of the call, read as another process would."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                for key in client.scan_iter(match="switchboard:dialog:*"):
                    if client.hget(key, "call_id") == callid.encode():
                        return dict(unpack(client.hget(key, "snapshot")))
                return None
            finally:
                client.close()
        if not self.path.exists():
            return None
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT snapshot FROM dialogs WHERE call_id = ?",
                             (callid,)).fetchone()
        return None if row is None else dict(unpack(row[0]))

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store("sqlite", tmp_path)
    yield store
    store.close()


def write_config(tmp_path: Path, store: Store, lifetime: int = 43200) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(f'[dialog]\nstore = "{store.url}"\nlifetime = {lifetime}\n'
                    "store_interval_ms = 50\n", encoding="utf-8")
    return path


def wait_stored(store: Store, callid: str, held: bool, timeout: float = 10.0) -> None:
    """Until the store holds the call (with a hold state when `held`)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = store.stored(callid)
        if snap is not None and ("hold" in snap) == held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{callid} not stored (held={held}) after {timeout} s: {snap}")
        time.sleep(0.05)


def stop(server: SwitchboardServer, how: str) -> None:
    if how == "SIGKILL":
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    else:
        assert server.stop() == 0


def start_call(sipp: StartSipp, server: SwitchboardServer, a_scenario: Path,
               b_scenario: Path) -> tuple[Sipp, Sipp, str]:
    b_port, a_port = free_port("udp"), free_port("udp")
    b = sipp("b", b_scenario, local_port=b_port, timeout=150).wait_listening()
    prefix = f"sb-restart-{secrets.token_hex(4)}-"
    a = sipp("a", a_scenario, remote=f"{server.host}:{server.udp_port}", local_port=a_port,
             timeout=120, keys={"uas_port": b_port}, extra_args=("-cid_str", prefix + "%u@%s"))
    return a, b, f"{prefix}1@127.0.0.1"


def cseq(msg: SipMessage) -> int:
    return int((msg.header("CSeq") or "").split()[0])


def mi_ok(server: SwitchboardServer, method: str, **params: Any) -> Any:
    reply = server.mi(method, params)
    assert "error" not in reply, f"{method} {params}: {reply!r}"
    return reply["result"]


def wait_available(server: SwitchboardServer, available: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = server.mi_result("statistics:get", statistics=["store:available"])
        if stats == {"store:available": available}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"store:available not {available} after {timeout} s: {stats}")
        time.sleep(0.05)


@pytest.mark.parametrize(("kind", "how"), [
    ("sqlite", "SIGKILL"), ("sqlite", "SIGTERM"),
    pytest.param("redis", "SIGKILL", marks=pytest.mark.redis),
    pytest.param("redis", "SIGTERM", marks=pytest.mark.redis),
    pytest.param("redis-restarted", "SIGKILL", marks=pytest.mark.redis),
])
def test_a_call_is_operated_and_ended_after_a_restart(
    kind: str, how: str, sipp: StartSipp, switchboard_server: StartServer,
    events: EventCollector, tmp_path: Path,
) -> None:
    store = Store(kind.split("-")[0], tmp_path)
    try:
        operated_and_ended_after_a_restart(store, kind == "redis-restarted", how, sipp,
                                           switchboard_server, events, tmp_path)
    finally:
        store.close()


def operated_and_ended_after_a_restart(
    store: Store, redis_restarted: bool, how: str, sipp: StartSipp,
    switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
) -> None:
    args = ("--config", str(write_config(tmp_path, store)), "--event-datagram", events.socket)
    server = switchboard_server(*args)
    a, b, callid = start_call(sipp, server, SCENARIOS / "restart/uac_held_transferred_hangs_up.xml",
                              SCENARIOS / "restart/uas_held_hung_up.xml")

    def hold_ok(action: str) -> None:
        events.wait_for("E_CALL_HOLD", lambda p: p.get("callid") == callid
                        and p.get("action") == action and p.get("state") == "ok", count=2)

    with killed_on_failure(a, b):
        before = wait_confirmed(server, callid)
        if redis_restarted:
            assert store.redis is not None
            wait_stored(store, callid, held=False)
            store.redis.kill()
        assert mi_ok(server, "callops:hold", callid=callid) == "OK"
        hold_ok("hold")
        if redis_restarted:
            assert store.redis is not None
            wait_available(server, 0)  # the hold's write failed: memory only
            store.redis.start()  # empty
            wait_available(server, 1)
        wait_stored(store, callid, held=True)
        stop(server, how)

        restarted = switchboard_server(*args, port=server.udp_port)
        after = wait_confirmed(restarted, callid)
        for key in ("ID", "callid", "from_tag", "to_tag", "caller_contact", "callee_contact"):
            assert after.get(key) == before.get(key), key
        assert mi_ok(restarted, "callops:unhold", callid=callid) == "OK"
        hold_ok("unhold")
        destination = f"sip:c@127.0.0.1:{free_port('udp')}"
        assert mi_ok(restarted, "callops:transfer", callid=callid, leg="caller",
                     destination=destination) == "Accepted"
        events.wait_for("E_CALL_TRANSFER", lambda p: p.get("callid") == callid
                        and p.get("state") == "fail" and p.get("status") == "603 Decline")
        # A's BYE, through the restarted proxy, ends the dialog it lists.
        wait_dialogs(restarted, lambda ds: all(d.get("callid") != callid for d in ds),
                     "the call ended", timeout=30.0)
    a_run, b_run = wait_clean(a, b)
    # The proxy speaks for B toward A (re-INVITEs, REFER) and for A toward B (re-INVITEs,
    # A's BYE shifted): each sequence goes on across the restart, one higher each time.
    to_a = [cseq(m) for m in received(a_run, "INVITE") + received(a_run, "REFER")]
    assert to_a == list(range(to_a[0], to_a[0] + 3)), to_a
    to_b = [cseq(m) for m in received(b_run, "INVITE") + received(b_run, "BYE")]
    assert to_b == [1, 2, 3, 4], to_b
    assert "dialog:restored_dialogs" in restarted.mi_result("statistics:get", statistics=["all"])
    restored = restarted.mi_result("statistics:get", statistics=["store:restored_dialogs"])
    assert restored == {"store:restored_dialogs": 1}
    assert store.stored(callid) is None


def test_the_lifetime_of_a_restored_call_runs_out(
    sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path, sqlite_store: Store,
) -> None:
    """The lifetime timer comes back with the call: the restarted proxy ends it in time,
    with a BYE to each party."""
    store = sqlite_store
    args = ("--config", str(write_config(tmp_path, store, lifetime=6)))
    server = switchboard_server(*args)
    a, b, callid = start_call(sipp, server, SCENARIOS / "uac_wait_bye.xml",
                              SCENARIOS / "uas_wait_bye.xml")
    with killed_on_failure(a, b):
        wait_confirmed(server, callid)
        wait_stored(store, callid, held=False)
        stop(server, "SIGKILL")
        restarted = switchboard_server(*args, port=server.udp_port)
        wait_confirmed(restarted, callid)
        wait_dialogs(restarted, lambda ds: all(d.get("callid") != callid for d in ds),
                     "the call ended by its lifetime", timeout=30.0)
    wait_clean(a, b)
    expired = restarted.mi_result("statistics:get", statistics=["dialog:expired_dialogs"])
    assert expired == {"dialog:expired_dialogs": 1}


def metric(server: SwitchboardServer, name: str) -> float:
    """The value of an unlabelled sample in the server's /metrics."""
    url = server.mi_url.removesuffix("/mi") + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} in /metrics: {values}"
    return float(values[0])


@pytest.mark.redis
def test_serve_starts_while_redis_is_down_and_writes_when_it_is_up(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
) -> None:
    store = Store("redis", tmp_path)
    assert store.redis is not None
    store.redis.kill()  # down before the proxy starts; started again on the same port later
    try:
        args = ("--config", str(write_config(tmp_path, store)),
                "--event-datagram", events.socket)
        server = switchboard_server(*args)
        line = server.wait_for_output("dialog store does not answer")
        assert "memory only" in line and str(store.redis.port) in line
        wait_available(server, 0)
        assert metric(server, "switchboard_dialog_store_available") == 0
        a, b, callid = start_call(sipp, server, SCENARIOS / "uac_wait_bye.xml",
                                  SCENARIOS / "uas_wait_bye.xml")
        with killed_on_failure(a, b):
            before = wait_confirmed(server, callid)
            store.redis.start()
            wait_available(server, 1)
            assert metric(server, "switchboard_dialog_store_available") == 1
            wait_stored(store, callid, held=False)
            client = store.redis.client()
            try:
                assert len(client.hget("switchboard:meta", "route_secret") or b"") == 64
            finally:
                client.close()
            stop(server, "SIGKILL")

            restarted = switchboard_server(*args, port=server.udp_port)
            after = wait_confirmed(restarted, callid)
            assert after.get("ID") == before.get("ID")
            assert restarted.mi_result("statistics:get", statistics=["store:available"]) == {
                "store:available": 1}
            assert mi_ok(restarted, "dialog:end_dlg", dialog_id=callid) == "OK"
            wait_dialogs(restarted, lambda ds: all(d.get("callid") != callid for d in ds),
                         "the call ended", timeout=30.0)
        wait_clean(a, b)
        assert store.stored(callid) is None
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p.get("callid") == callid
                        and p.get("new_state") == 5)
    finally:
        store.close()
