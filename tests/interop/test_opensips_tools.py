"""The OpenSIPS tools operators already use, pointed at switchboard instead of OpenSIPS.

The `opensips` PyPI package (python-opensips, GPLv3, a test-only dependency) provides the
`opensips-mi` management client and the `opensips-event` subscriber, and the classes behind
them. Here they run unchanged in HTTP mode against a real `switchboard serve`, with real
baresip user agents in the calls:

- `opensips-mi` (its command line, as an operator types it): `which`, `dialog:list` and the
  old `dlg_list`, `callops:hold` and the old `call_unhold`, `call_transfer`;
- `opensips-event` (command line) subscribed to E_CALL_HOLD, and the package's
  `OpenSIPSEventHandler` subscribed to E_CALL_TRANSFER through MI `event_subscribe`,
  receiving the events of a real hold and a real blind transfer.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opensips.event import OpenSIPSEventHandler
from opensips.mi import OpenSIPSMI

from tests.interop.baresip import BaresipPeer, PeerFactory
from tests.support.ports import HOST
from tests.support.server import CONFIRMED, SwitchboardServer, wait_confirmed

pytestmark = [pytest.mark.interop, pytest.mark.baresip]

CAROL = "sip:carol@127.0.0.1"


@pytest.fixture(autouse=True)
def sb(switchboard_server: Callable[..., SwitchboardServer]) -> SwitchboardServer:
    """Started before the peers (autouse) so that they can register, stopped after them."""
    return switchboard_server()


def opensips_mi(sb: SwitchboardServer, cwd: Path, *args: str) -> Any:
    """Run `opensips-mi -t http -i 127.0.0.1 -p MI_PORT ARGS...`; its printed JSON result."""
    result = subprocess.run(
        [sys.executable, "-m", "opensips.mi", "-t", "http", "-i", HOST,
         "-p", str(sb.mi_port), *args],
        # Its own directory: the tool reads a `.env` from the working directory.
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def register(
    peer: PeerFactory, sb: SwitchboardServer, *specs: tuple[str, dict[str, Any]]
) -> list[BaresipPeer]:
    peers = [peer(user, registrar=f"sip:{HOST}:{sb.udp_port}", **kw) for user, kw in specs]
    for p in peers:
        p.wait_event("registered")
    return peers


def call(caller: BaresipPeer, callee: BaresipPeer, uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    dialed = caller.dial(uri)
    incoming = callee.wait_event("incoming", call_id=dialed["call_id"])
    caller.wait_event("established", call=dialed["call"])
    callee.wait_event("established", call=incoming["call"])
    return dialed, incoming


# --- opensips-event, the command line -----------------------------------------------------------


class EventTail:
    """`opensips-event -t http ... -T datagram -li 127.0.0.1 EVENT` in the background; the
    notifications it prints (indented JSON, one object after another) are parsed as they
    come."""

    def __init__(self, sb: SwitchboardServer, event: str, cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opensips.event", "-t", "http", "-i", HOST,
             "-p", str(sb.mi_port), "-T", "datagram", "-li", HOST, event],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self.items: queue.Queue[dict[str, Any]] = queue.Queue()
        self.output: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.proc.stdout:
            self.output.append(line)
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                self.items.put(obj)

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"opensips-event printed no event within {timeout} s:\n{''.join(self.output)}"
            ) from None

    def stop(self) -> int:
        """SIGTERM: the tool unsubscribes (event_subscribe with expire 0) and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def event_tail(tmp_path: Path) -> Iterator[Callable[[SwitchboardServer, str], EventTail]]:
    tails: list[EventTail] = []

    def start(sb: SwitchboardServer, event: str) -> EventTail:
        tail = EventTail(sb, event, tmp_path)
        tails.append(tail)
        return tail

    yield start
    for tail in tails:
        tail.stop()
        print(f"opensips-event output:\n{''.join(tail.output)}")


def wait_subscriptions(sb: SwitchboardServer, count: int, timeout: float = 15.0) -> None:
    """Wait until switchboard has `count` event subscriptions in force."""
    deadline = time.monotonic() + timeout
    while True:
        stats = sb.mi_result("statistics:get", statistics=["evi:subscriptions"])
        if stats["evi:subscriptions"] == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{stats} after {timeout} s, expected {count}")
        time.sleep(0.1)


# --- the tests -------------------------------------------------------------------------------


def test_opensips_mi_which_lists_new_and_old_names(sb: SwitchboardServer, tmp_path: Path) -> None:
    names = opensips_mi(sb, tmp_path, "which")
    for name in ("which", "dialog:list", "dlg_list", "callops:hold", "call_hold",
                 "callops:unhold", "call_unhold", "callops:transfer", "call_transfer",
                 "evi:subscribe", "event_subscribe", "statistics:get", "get_statistics"):
        assert name in names, name
    assert opensips_mi(sb, tmp_path, "which", "dialog:list") == [[], ["callid"],
                                                                  ["callid", "from_tag"]]
    # The tool's own statistics shortcut (-s) uses the old name get_statistics.
    stats = opensips_mi(sb, tmp_path, "-s", "dialog:")
    assert stats["dialog:active_dialogs"] == 0


def test_opensips_tools_list_and_hold_a_real_call(
    sb: SwitchboardServer,
    peer: PeerFactory,
    event_tail: Callable[[SwitchboardServer, str], EventTail],
    tmp_path: Path,
) -> None:
    bob, alice = register(peer, sb, ("bob", {"auto_answer": True}), ("alice", {}))
    holds = event_tail(sb, "E_CALL_HOLD")
    wait_subscriptions(sb, 1)
    dialed, incoming = call(alice, bob, "sip:bob@127.0.0.1")
    callid = dialed["call_id"]
    dialog = wait_confirmed(sb, callid)

    listed = opensips_mi(sb, tmp_path, "dialog:list")
    assert [d["callid"] for d in listed["Dialogs"]] == [callid]
    assert listed["Dialogs"][0]["ID"] == dialog["ID"]
    one = opensips_mi(sb, tmp_path, "dlg_list", callid)  # old name, positional callid
    assert one["Dialog"]["callid"] == callid and one["Dialog"]["state"] == CONFIRMED

    # New name with named params (-j), old name with positional ones.
    assert opensips_mi(sb, tmp_path, "callops:hold", "-j",
                       json.dumps({"callid": callid, "leg": "caller"})) == "OK"
    assert alice.wait_event("remote_hold", call=dialed["call"])["on"] is True
    assert opensips_mi(sb, tmp_path, "call_unhold", callid, "caller") == "OK"
    assert alice.wait_event("remote_hold", call=dialed["call"])["on"] is False

    # A hold re-INVITEs both legs (the held one gets sendonly/inactive, spec §7.2): each leg
    # raises start then ok, for the hold and again for the unhold.
    got = [holds.next() for _ in range(8)]
    assert {g["method"] for g in got} == {"E_CALL_HOLD"}
    assert {g["params"]["callid"] for g in got} == {callid}
    steps = [(g["params"]["action"], g["params"]["leg"], g["params"]["state"]) for g in got]
    assert [a for a, _, _ in steps] == ["hold"] * 4 + ["unhold"] * 4, steps
    for action in ("hold", "unhold"):
        for leg in ("caller", "callee"):
            assert [st for a, lg, st in steps if (a, lg) == (action, leg)] == ["start", "ok"]
    assert holds.stop() == 0
    wait_subscriptions(sb, 0)  # the tool unsubscribed on its way out

    stats = opensips_mi(sb, tmp_path, "get_statistics", "-j",
                        json.dumps({"statistics": ["callops:"]}))
    assert stats["callops:hold_ok"] == 2 and stats["callops:unhold_ok"] == 2

    bob.hangup(call=incoming["call"])
    alice.wait_event("closed", call=dialed["call"])


def test_event_handler_receives_a_real_transfer(
    sb: SwitchboardServer, peer: PeerFactory, tmp_path: Path
) -> None:
    """python-opensips' OpenSIPSEventHandler subscribes to E_CALL_TRANSFER with MI
    `event_subscribe` over HTTP and gets every step of a blind transfer started with
    `opensips-mi call_transfer`."""
    carol, bob, alice = register(
        peer, sb,
        ("carol", {"auto_answer": True}),
        ("bob", {"auto_answer": True}),
        ("alice", {"transfer_policy": "auto"}),
    )
    dialed, incoming = call(alice, bob, "sip:bob@127.0.0.1")
    old = dialed["call_id"]
    wait_confirmed(sb, old)

    received: queue.Queue[dict[str, Any] | None] = queue.Queue()
    handler = OpenSIPSEventHandler(OpenSIPSMI("http", url=sb.mi_url), "datagram", ip=HOST, port=0)
    subscription = handler.subscribe("E_CALL_TRANSFER", received.put)
    try:
        assert opensips_mi(sb, tmp_path, "call_transfer", "-j", json.dumps(
            {"callid": old, "leg": "caller", "destination": CAROL})) == "Accepted"
        new_call = alice.wait_event("transfer_call")
        carol_in = carol.wait_event("incoming", call_id=new_call["call_id"])
        carol.wait_event("established", call=carol_in["call"])

        steps: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(s["state"] in ("ok", "fail") for s in steps):
            item = received.get(timeout=max(0.1, deadline - time.monotonic()))
            assert item is not None, "the handler lost its event stream"
            assert item["method"] == "E_CALL_TRANSFER"
            steps.append(item["params"])
        wait_subscriptions(sb, 1)
    finally:
        subscription.unsubscribe()
    wait_subscriptions(sb, 0)

    assert {s["callid"] for s in steps} == {old}
    assert steps[0]["state"] == "start" and steps[0]["destination"] == CAROL
    assert steps[-1]["state"] == "ok", steps
    assert steps[-1]["transfer_callid"] == new_call["call_id"]
    assert steps[-1]["status"].startswith("200")
    stats = sb.mi_result("statistics:get", statistics=["callops:"])
    assert stats["callops:transfer_ok"] == 1
    # The proxy ends the old call; carol and alice talk.
    bob.wait_event("closed", call=incoming["call"])
    carol.hangup(call=carol_in["call"])
