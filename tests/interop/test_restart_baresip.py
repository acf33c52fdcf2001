"""A call between two real baresip user agents outlives a restart of `switchboard serve`
(local runtime, `[dialog] store = "sqlite:PATH"`).

alice and bob register with the proxy (also their outbound proxy); alice calls bob, the call
is confirmed and stored; the proxy is SIGKILLed and started again on the same port and store.
The restarted proxy lists the call with the same id, holds and unholds it from the MI (each
UA reports being held, then not: the re-INVITEs the proxy sends as the other party are
accepted, their CSeqs going on where the old process left them), and tracks bob's BYE: the
call leaves `dialog:list` and `E_DLG_STATE_CHANGED` reports it deleted.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.interop.baresip import BaresipPeer, PeerFactory
from tests.interop.sip_trace import trace
from tests.support.events import EventCollector
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed, wait_dialogs

pytestmark = [pytest.mark.baresip, pytest.mark.interop]

DELETED = 5  # E_DLG_STATE_CHANGED new_state of an ended dialog


def register(peer: PeerFactory, server: SwitchboardServer, user: str, **kw: Any
             ) -> BaresipPeer:
    p = peer(user, registrar=f"sip:127.0.0.1:{server.udp_port}", sip_trace=True, **kw)
    p.wait_event("registered")
    return p


def stored(path: Path, callid: str) -> bool:
    if not path.exists():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT 1 FROM dialogs WHERE call_id = ?",
                          (callid,)).fetchone() is not None


def wait_until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)


def received_cseqs(p: BaresipPeer, callid: str) -> list[int]:
    """The CSeq numbers of the requests `p` received in the call (ACKs left out)."""
    return [m.cseq[0] for m in trace(p, callid)
            if m.direction == "RX" and m.method not in (None, "ACK", "CANCEL")]


def test_a_baresip_call_is_held_and_ended_after_a_restart(
    peer: PeerFactory, switchboard_server: StartServer, events: EventCollector,
    tmp_path: Path,
) -> None:
    path = tmp_path / "dialogs.sqlite"
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[dialog]\nstore = "sqlite:{path}"\nstore_interval_ms = 50\n',
                      encoding="utf-8")
    args = ("--config", str(config), "--event-datagram", events.socket)
    server = switchboard_server(*args)
    bob = register(peer, server, "bob", auto_answer=True)
    alice = register(peer, server, "alice")

    dialed = alice.dial("sip:bob@127.0.0.1")
    callid = dialed["call_id"]
    incoming = bob.wait_event("incoming", call_id=callid)
    alice.wait_event("established", call=dialed["call"])
    bob.wait_event("established", call=incoming["call"])
    before = wait_confirmed(server, callid)
    wait_until("stored", lambda: stored(path, callid))
    time.sleep(0.5)  # baresip's own media-update re-INVITE, if any, written too
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)

    restarted = switchboard_server(*args, port=server.udp_port)
    after = wait_confirmed(restarted, callid)
    assert after["ID"] == before["ID"]
    assert restarted.mi_result("statistics:get", statistics=["store:restored_dialogs"]) == {
        "store:restored_dialogs": 1}
    cseqs_before = {p.user: received_cseqs(p, callid) for p in (alice, bob)}

    assert restarted.mi_result("callops:hold", callid=callid) == "OK"
    events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] != "start",
                    count=2)
    for p, call in ((alice, dialed["call"]), (bob, incoming["call"])):
        assert p.wait_event("remote_hold", call=call)["on"] is True
    assert restarted.mi_result("callops:unhold", callid=callid) == "OK"
    events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] != "start",
                    count=4)
    for p, call in ((alice, dialed["call"]), (bob, incoming["call"])):
        assert p.wait_event("remote_hold", call=call)["on"] is False
    holds = events.sequence("E_CALL_HOLD", callid, "leg", "action", "state")
    assert sorted(holds) == sorted(
        (leg, action, state) for leg in ("caller", "callee") for action in ("hold", "unhold")
        for state in ("start", "ok")), holds

    bob.hangup(call=incoming["call"])
    alice.wait_event("closed", call=dialed["call"])
    wait_dialogs(restarted, lambda ds: all(d.get("callid") != callid for d in ds),
                 "the call ended")
    events.wait_for("E_DLG_STATE_CHANGED", lambda p: p.get("callid") == callid
                    and p.get("new_state") == DELETED)
    wait_until("deleted from the store", lambda: not stored(path, callid))

    # Each UA received the proxy's two re-INVITEs (speaking for its peer), then (alice) the
    # BYE, each with a higher CSeq than any request it got before the restart; and no UA
    # answered or was answered an error. (A peer's trace comes through its stderr, which
    # can lag behind its events: read until it holds what the events said.)
    def wire() -> None:
        for p in (alice, bob):
            got = received_cseqs(p, callid)
            earlier = got[:len(cseqs_before[p.user])]
            later = got[len(cseqs_before[p.user]):]
            assert earlier == cseqs_before[p.user]
            assert len(later) == (3 if p is alice else 2), (p.user, got)
            assert later == sorted(later) and len(set(later)) == len(later), (p.user, got)
            assert all(c > max(earlier, default=0) for c in later), (p.user, got)
            errors = [str(m) for m in trace(p, callid)
                      if m.status is not None and m.status >= 300]
            assert not errors, (p.user, errors)

    deadline = time.monotonic() + 5.0
    while True:
        try:
            wire()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
