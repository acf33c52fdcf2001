"""Workers behind one address, each with a UDP port of its own besides (`[runtime]
worker_ports`, docs/ray.md "A port of each worker's own toward next hops"), on a real local
Ray with SIPp parties of one socket each:

- a call's INVITE leaves its owner from the owner's own port, with a Record-Route for it
  above the one for the shared address (RFC 5658), so the callee's answers and its BYE come
  straight to the owner: of a call's messages only the caller's, sent to the shared
  address, are ever handed from one worker to the other;
- the owner's own requests (the re-INVITEs of `callops:hold`) go to each party from the
  socket that party knows: the callee's from the owner's port, the caller's from the shared
  address.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ray_service import Service, import_ray, start_service, stop_service
from tests.support.events import collecting
from tests.support.ports import HOST, free_port
from tests.support.sipp import (
    SipMessage,
    StartSipp,
    assert_clean,
    killed_on_failure,
    received,
    wait_caller_first,
)

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CALLS = 16
_PORT = re.compile(r":(\d+)[;>]")


@pytest.fixture(scope="module")
def own_ports(ray_cluster: str) -> Iterator[Service]:
    running = start_service(2, shared_port=True, worker_ports=True)
    try:
        yield running
    finally:
        stop_service(running)


def _port(value: str | None) -> int:
    """The port of a Via or Record-Route value."""
    assert value is not None
    found = _PORT.search(value)
    assert found is not None, value
    return int(found.group(1))


def _handed(service: Service) -> int:
    return int(dict(service.mi("statistics:get", statistics=["handoff:"]))["handoff:sent"])


def _top_via_ports(messages: list[SipMessage]) -> Counter[int]:
    return Counter(_port(m.header("Via")) for m in messages)


def test_the_callees_messages_come_straight_to_the_owner(sipp: StartSipp,
                                                        own_ports: Service) -> None:
    """The callee hangs up: its 180, 200 and BYE go to the port the owner wrote in its Via
    and Record-Route, so none is handed over; the caller's INVITE, ACK and 200 for the BYE
    come to the shared address on one socket, which the kernel gives to one worker: they
    are handed over exactly for the calls the other worker owns."""
    shared, own = own_ports.port(0), own_ports.worker_ports
    before = _handed(own_ports)
    with collecting() as events:
        assert own_ports.mi("evi:subscribe", event="E_DLG_STATE_CHANGED",
                            socket=events.socket, expire=120) == "OK"
        try:
            b = sipp("b", SCENARIOS / "uas_hangs_up.xml", local_port=free_port("udp"),
                     calls=CALLS).wait_listening()
            a = sipp("a", "uac_wait_bye.xml", remote=f"{HOST}:{shared}",
                     local_port=free_port("udp"), calls=CALLS, rate=20,
                     keys={"uas_port": b.local_port},
                     extra_args=("-cid_str", "sb-own-%u@%s"))
            with killed_on_failure(a, b):
                a_result, b_result = wait_caller_first(a, b)
            assert_clean(a_result, b_result, calls=CALLS)
            events.wait_for("E_DLG_STATE_CHANGED",
                            lambda p: str(p["callid"]).startswith("sb-own-")
                            and p["new_state"] == 5, count=CALLS)
            owners = Counter(str(p["id"]).partition(".")[0] for p in events.params(
                "E_DLG_STATE_CHANGED", lambda p: str(p["callid"]).startswith("sb-own-")
                and p["new_state"] == 5))
        finally:
            own_ports.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=events.socket,
                         expire=0)
    assert set(owners) == {"0", "1"} and sum(owners.values()) == CALLS, owners

    invites = received(b_result, "INVITE")
    assert len(invites) == CALLS
    # Each INVITE came from its owner's own port: both ports, as many as each owns.
    assert _top_via_ports(invites) == {own + int(w): n for w, n in owners.items()}
    for invite in invites:
        top, below = invite.headers("Record-Route")[:2]
        assert _port(top) == _port(invite.header("Via")) and _port(below) == shared, invite

    handed = _handed(own_ports) - before
    # INVITE, ACK and the 200 for the BYE of each call of the worker the kernel did not pick.
    assert handed in {3 * owners["0"], 3 * owners["1"]}, (handed, owners)


def test_hold_reinvites_reach_each_party_from_the_socket_it_knows(
    sipp: StartSipp, own_ports: Service
) -> None:
    shared, own = own_ports.port(0), own_ports.worker_ports
    uas_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_hold_restart.xml", local_port=uas_port, timeout=60,
             recv_timeout=30).wait_listening()
    a = sipp("a", SCENARIOS / "uac_hold_restart.xml", remote=f"{HOST}:{shared}",
             local_port=free_port("udp"), keys={"uas_port": uas_port}, timeout=60,
             recv_timeout=30, extra_args=("-cid_str", "sb-own-hold-%u@%s"))
    with collecting() as events:
        assert own_ports.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket,
                            expire=120) == "OK"
        with killed_on_failure(a, b):
            dialog = _confirmed(own_ports, "sb-own-hold-")
            for rnd, operation in enumerate(("callops:hold", "callops:unhold",
                                             "callops:hold")):
                assert own_ports.mi(operation, callid=dialog["callid"]) == "OK"
                events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == dialog["callid"]
                                and p["state"] == "ok", count=2 * (rnd + 1))
        a_result, b_result = wait_caller_first(a, b)
        assert_clean(a_result, b_result)
        own_ports.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket, expire=0)
    owner_port = own + int(str(dialog["ID"]).partition(".")[0])
    for result, port in ((a_result, shared), (b_result, owner_port)):
        reinvites = [m for m in received(result, "INVITE") if ";tag=" in (m.header("To") or "")]
        assert ["a=inactive" in m.body for m in reinvites] == [True, False, True]
        assert _top_via_ports(reinvites) == {port: 3}


def _confirmed(service: Service, prefix: str) -> dict[str, Any]:
    """The one confirmed dialog whose Call-ID starts with `prefix`, once there is one."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found: list[dict[str, Any]] = [d for d in service.mi("dialog:list")["Dialogs"]
                                       if str(d["callid"]).startswith(prefix)
                                       and d["state"] == 4]
        if found:
            (dialog,) = found
            return dialog
        time.sleep(0.1)
    raise AssertionError(f"no confirmed dialog {prefix}* after 20 s")
