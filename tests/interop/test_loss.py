"""Calls, a blind transfer and hold/unhold through switchboard over lossy UDP links.

Every SIPp agent sits behind its own fault-injecting relay (`lossy.py`): 10 % of the datagrams
are dropped in each direction, 2 % duplicated and 5 % held back 50 ms (so others overtake
them), with a fixed seed per relay (for the one-call tests, seeds whose first datagrams
include drops both ways: the caller's first INVITE and the first answers it gets are lost). Each agent names its relay's switchboard-side port in Via
and Contact, so everything switchboard sends to it crosses the relay too. Nothing but SIP's
own retransmissions repairs the damage: SIPp's (T1 500 ms, at most 7 INVITE and 10 non-INVITE
retransmissions, T2 4 s; not -nr) and switchboard's transaction timers.

Scenarios: scenarios/loss/. The completion rates at 0/5/10/20 % come from `python -m
bench.loss`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.lossy import Faults, LossyRelay, RelayPool
from tests.support.events import EventCollector
from tests.support.ports import HOST, free_port
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed
from tests.support.sipp import Sipp, StartSipp, killed_on_failure, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


SCENARIOS = Path(__file__).resolve().parent / "scenarios" / "loss"
LOSSY = Faults(loss=0.10, duplicate=0.02, reorder=0.05)
# SIPp's own retransmissions, spelt out (these are close to its defaults; -nr would disable
# them). Timer T1 is each scenario's retrans="500".
SIPP_RETRANS = ("-max_invite_retrans", "7", "-max_non_invite_retrans", "10", "-T2", "4000")
# No datagram for this long: every retransmission timer started by a loss has fired
# (SIPp's 500 ms, 1 s, 2 s, then T2 = 4 s apart; a quiet spell of 2.5 s after three losses of
# one message in a row is the rare case where this is too short).
QUIET = 2.5


@pytest.fixture
def relays() -> Iterator[RelayPool]:
    with RelayPool() as pool:
        yield pool
        print(f"relays: {pool.totals()}")


def callee(
    sipp: StartSipp,
    relays: RelayPool,
    server: SwitchboardServer,
    name: str,
    scenario: str,
    *,
    seed: int,
    calls: int = 1,
    timeout: float = 90.0,
) -> tuple[Sipp, LossyRelay]:
    """A SIPp UAS behind its own relay; the relay's `sb_port` is its address for the proxy."""
    port = free_port("udp")
    relay = relays.relay(server.udp_address, ua=(HOST, port), faults=LOSSY, seed=seed)
    uas = sipp(
        name,
        SCENARIOS / scenario,
        local_port=port,
        calls=calls,
        timeout=timeout,
        keys={"contact_port": relay.sb_port},
        extra_args=SIPP_RETRANS,
    ).wait_listening()
    return uas, relay


def caller(
    sipp: StartSipp,
    relays: RelayPool,
    server: SwitchboardServer,
    scenario: str,
    uas_relay: LossyRelay,
    *,
    seed: int,
    calls: int = 1,
    rate: float | None = None,
    timeout: float = 60.0,
    extra_args: tuple[str, ...] = (),
) -> tuple[Sipp, LossyRelay]:
    """A SIPp UAC behind its own relay, calling the UAS behind `uas_relay`."""
    relay = relays.relay(server.udp_address, faults=LOSSY, seed=seed)
    uac = sipp(
        "a",
        SCENARIOS / scenario,
        remote=f"{HOST}:{relay.ua_port}",
        local_port=free_port("udp"),
        calls=calls,
        rate=rate,
        timeout=timeout,
        keys={"uas_port": uas_relay.sb_port, "contact_port": relay.sb_port},
        extra_args=(*SIPP_RETRANS, *extra_args),
    )
    return uac, relay


def wait_no_dialogs(server: SwitchboardServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        dialogs = server.mi_result("dialog:list").get("Dialogs", [])
        if not dialogs:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"dialogs left after {timeout} s: {dialogs!r}")
        time.sleep(0.1)


def assert_faults_happened(relays: RelayPool) -> None:
    totals = relays.totals()
    for direction, counts in totals.items():
        assert counts.dropped > 0, (direction, totals)


def test_calls_complete_at_10_percent_loss(
    sipp: StartSipp, switchboard: SwitchboardServer, relays: RelayPool
) -> None:
    """50 calls (INVITE/180/200/ACK, BYE/200) at 10 calls/s, all complete on both sides."""
    calls = 50
    b, b_relay = callee(sipp, relays, switchboard, "b", "uas.xml", seed=2, calls=calls)
    a, _ = caller(sipp, relays, switchboard, "uac.xml", b_relay, seed=1, calls=calls, rate=10)
    wait_clean(a, b, grace=20.0, calls=calls)
    assert_faults_happened(relays)
    wait_no_dialogs(switchboard)


def test_blind_transfer_at_10_percent_loss(
    sipp: StartSipp, switchboard_server: StartServer, relays: RelayPool, events: EventCollector
) -> None:
    """A calls B; the MI transfers A (the caller leg) to C. The REFER, both NOTIFYs, the new
    call to C and the proxy's BYEs of the old call all cross lossy links, and the transfer
    reports start, notify 100, start (linked), ok, notify 200."""
    server = switchboard_server("--event-datagram", events.socket)
    b, b_relay = callee(sipp, relays, server, "b", "uas.xml", seed=122)
    c, c_relay = callee(sipp, relays, server, "c", "uas.xml", seed=123)
    prefix = f"sb-loss-xfer-{secrets.token_hex(4)}-"
    a, _ = caller(
        sipp, relays, server, "uac_transferee.xml", b_relay, seed=121,
        extra_args=("-cid_str", prefix + "%u@%s"),
    )
    callid = f"{prefix}1@127.0.0.1"
    with killed_on_failure(a, b, c):
        wait_confirmed(server, callid, timeout=20.0)
        dest = f"sip:c@127.0.0.1:{c_relay.sb_port}"
        reply = server.mi("callops:transfer", callid=callid, leg="caller", destination=dest)
        assert reply.get("result") == "Accepted", reply
    wait_clean(a, b, c, grace=20.0)
    new = f"xfer///{callid}"
    states = [
        (p["state"], p["transfer_callid"], p["status"])
        for p in events.params("E_CALL_TRANSFER", lambda p: p.get("callid") == callid)
    ]
    assert states[:4] == [
        ("start", "", ""),
        ("notify", "", "100 Trying"),
        ("start", new, ""),
        ("ok", new, "200 OK"),
    ], events.describe()
    # The final NOTIFY reaches the proxy unless every copy of it was lost before the old
    # call ended (SIPp stops retransmitting it when the proxy's BYE arrives).
    assert states[4:] in ([], [("notify", new, "200 OK")]), events.describe()
    assert_faults_happened(relays)
    wait_no_dialogs(server)


def test_hold_and_unhold_at_10_percent_loss(
    sipp: StartSipp, switchboard_server: StartServer, relays: RelayPool, events: EventCollector
) -> None:
    """MI hold then unhold of both legs: each leg's re-INVITE is answered and ACKed across the
    lossy links, every leg reports start then ok for both actions, and the call is then hung
    up cleanly."""
    server = switchboard_server("--event-datagram", events.socket)
    b, b_relay = callee(sipp, relays, server, "b", "uas_held.xml", seed=122)
    prefix = f"sb-loss-hold-{secrets.token_hex(4)}-"
    a, _ = caller(
        sipp, relays, server, "uac_held.xml", b_relay, seed=121,
        extra_args=("-cid_str", prefix + "%u@%s"),
    )
    callid = f"{prefix}1@127.0.0.1"

    def settled(action: str) -> None:
        events.wait_for(
            "E_CALL_HOLD",
            lambda p: p["callid"] == callid and p["action"] == action and p["state"] != "start",
            timeout=30,
            count=2,
        )

    with killed_on_failure(a, b):
        wait_confirmed(server, callid, timeout=20.0)
        # A SIPp callee does not answer a re-INVITE while it still retransmits a 200 whose
        # ACK was lost (a real UA would): let the repairs finish before each re-INVITE.
        relays.wait_quiet(QUIET, timeout=30)
        assert server.mi_result("callops:hold", callid=callid) == "OK"
        settled("hold")
        relays.wait_quiet(QUIET, timeout=30)
        assert server.mi_result("callops:unhold", callid=callid) == "OK"
        settled("unhold")
    wait_clean(a, b, grace=20.0)
    outcome = sorted(
        (p["action"], p["leg"], p["state"])
        for p in events.params("E_CALL_HOLD", lambda p: p.get("callid") == callid)
    )
    assert outcome == sorted(
        (action, leg, state)
        for action in ("hold", "unhold")
        for leg in ("caller", "callee")
        for state in ("start", "ok")
    ), events.describe()
    assert_faults_happened(relays)
    wait_no_dialogs(server)
