"""Calls that outlive a restart of `switchboard serve` (local runtime, `[dialog] store =
"sqlite:PATH"`), with SIPp as both parties.

A calls B through the proxy; the call is held; the proxy is stopped (SIGKILL, or SIGTERM
and its drain) and started again on the same port with the same store. The call is listed
again with the same id, is unheld, transferred (A declines the REFER) and hung up by A, each
through the restarted proxy; the proxy's requests continue each party's CSeq sequence where
it was before the restart, and the BYE ends the listed dialog. Another call, whose lifetime
runs out after the restart, is ended by the restarted proxy with a BYE each way.
Scenarios: scenarios/restart/ (the second test reuses uac_wait_bye.xml, uas_wait_bye.xml).
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from switchboard.readout import unpack
from tests.support.events import EventCollector
from tests.support.ports import free_port
from tests.support.server import (
    StartServer,
    SwitchboardServer,
    wait_confirmed,
    wait_dialogs,
)
from tests.support.sipp import SipMessage, Sipp, StartSipp, killed_on_failure, received, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def write_config(tmp_path: Path, store: Path, lifetime: int = 43200) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(f'[dialog]\nstore = "sqlite:{store}"\nlifetime = {lifetime}\n'
                    "store_interval_ms = 50\n", encoding="utf-8")
    return path


def stored(store: Path, callid: str) -> dict[str, Any] | None:
    """The snapshot the store holds of the call, read as another process would."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        row = db.execute("SELECT snapshot FROM dialogs WHERE call_id = ?", (callid,)).fetchone()
    return None if row is None else dict(unpack(row[0]))


def wait_stored(store: Path, callid: str, held: bool, timeout: float = 10.0) -> None:
    """Until the store holds the call (with a hold state when `held`)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = stored(store, callid) if store.exists() else None
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


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_call_is_operated_and_ended_after_a_restart(
    how: str, sipp: StartSipp, switchboard_server: StartServer, events: EventCollector,
    tmp_path: Path,
) -> None:
    store = tmp_path / "dialogs.sqlite"
    args = ("--config", str(write_config(tmp_path, store)), "--event-datagram", events.socket)
    server = switchboard_server(*args)
    a, b, callid = start_call(sipp, server, SCENARIOS / "restart/uac_held_transferred_hangs_up.xml",
                              SCENARIOS / "restart/uas_held_hung_up.xml")

    def hold_ok(action: str) -> None:
        events.wait_for("E_CALL_HOLD", lambda p: p.get("callid") == callid
                        and p.get("action") == action and p.get("state") == "ok", count=2)

    with killed_on_failure(a, b):
        before = wait_confirmed(server, callid)
        assert mi_ok(server, "callops:hold", callid=callid) == "OK"
        hold_ok("hold")
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
    assert stored(store, callid) is None


def test_the_lifetime_of_a_restored_call_runs_out(
    sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path,
) -> None:
    """The lifetime timer comes back with the call: the restarted proxy ends it in time,
    with a BYE to each party."""
    store = tmp_path / "dialogs.sqlite"
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
