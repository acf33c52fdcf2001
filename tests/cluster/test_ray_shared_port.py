"""One address for every worker of a node (docs/ray.md "One address for every worker"), on a
real local Ray: 2 workers bind the same UDP and TCP port (`[runtime] shared_port`), SIPp
parties talk to that one port from one socket each, and every call is owned by the worker its
Call-ID hashes to, whichever worker the kernel gives its messages to.

- a trunk's calls (one SIPp socket) are spread over both workers and all complete, whether
  the proxy, the callee or the caller ends them, with every dialog tracked to its end;
- `callops:hold` and a blind `callops:transfer` from the MI work on calls owned by either
  worker: the transferee's new INVITE, whose Call-ID may hash to the other worker, reaches the
  old call's owner by the dialog id in its Request-URI, so the transfer is linked there (the
  same E_CALL_TRANSFER sequence as in one process, both calls on one worker);
- a user registered through one worker (the REGISTER's Call-ID hashes to it) is reached by
  calls whose Call-IDs hash to either: every worker keeps a copy of the node's bindings;
- the WebSocket listener is shared too: a browser-like client on one WebSocket registers and
  is called through calls owned by either worker, over its one connection;
- a worker that Ray restarts binds the shared address again and takes its share of new
  calls (the last test of the module: it restarts a worker).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from switchboard.cluster.owner import hashed_worker
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.wire import Address
from tests.cluster.ray_service import Service, import_ray, start_service, stop_service
from tests.support.events import EventCollector, collecting
from tests.support.ports import HOST, free_port
from tests.support.sipp import (
    StartSipp,
    assert_clean,
    killed_on_failure,
    received,
    wait_caller_first,
)
from tests.unit.kit.proxy import invite, reply, sip_request
from tests.unit.kit.shared_port import Party, WsParty

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
CALLOPS = HERE.parent / "interop" / "scenarios" / "callops"
WORKERS = (0, 1)
CALLS = 16
TRANSFER_KEYS = ("leg", "transfer_callid", "destination", "state", "status")


@pytest.fixture(scope="module")
def shared(ray_cluster: str) -> Iterator[Service]:
    """2 workers behind one address (the base port, UDP and TCP; a WebSocket port), and
    the MI."""
    running = start_service(2, shared_port=True, ws=True)
    try:
        yield running
    finally:
        stop_service(running)


def _prefix(tag: str) -> str:
    return f"sb-shared-{tag}-{secrets.token_hex(3)}-"


def _prefix_owned_by(worker: int, tag: str, new_call_elsewhere: bool = False) -> str:
    """A `-cid_str` prefix whose first call (`<prefix>1@127.0.0.1`) hashes to `worker`; with
    `new_call_elsewhere`, the transfer's new call (`xfer///<that>`) hashes to the other one."""
    while True:
        prefix = _prefix(tag)
        callid = f"{prefix}1@{HOST}"
        if hashed_worker(callid.encode(), WORKERS) != worker:
            continue
        if new_call_elsewhere and hashed_worker(f"xfer///{callid}".encode(),
                                                WORKERS) == worker:
            continue
        return prefix


def _wait_dialogs(shared: Service, prefix: str, count: int, timeout: float = 20.0
                  ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [d for d in shared.mi("dialog:list")["Dialogs"]
                 if str(d["callid"]).startswith(prefix) and d["state"] == 4]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(found)} of {count} confirmed dialogs {prefix}* after {timeout} s")


def _owners(dialogs: list[dict[str, Any]]) -> Counter[str]:
    """How many of `dialogs` each worker owns (a dialog id's prefix names its worker)."""
    return Counter(str(d["ID"]).partition(".")[0] for d in dialogs)


def _ended(events: EventCollector, prefix: str, count: int) -> Counter[str]:
    """Wait until `count` dialogs of `prefix` reached state 5 (deleted); their owners."""
    def gone(p: dict[str, Any]) -> bool:
        return str(p["callid"]).startswith(prefix) and p["new_state"] == 5

    events.wait_for("E_DLG_STATE_CHANGED", gone, count=count)
    return Counter(str(p["id"]).partition(".")[0]
                   for p in events.params("E_DLG_STATE_CHANGED", gone))


def _handoff(shared: Service) -> dict[str, int]:
    return dict(shared.mi("statistics:get", statistics=["handoff:"]))


def _run_calls(sipp: StartSipp, shared: Service, caller: str, callee: str | Path, tag: str,
               during: Callable[[str], None] | None = None) -> str:
    prefix = _prefix(tag)
    b = sipp("b", callee, local_port=free_port("udp"), calls=CALLS).wait_listening()
    a = sipp("a", caller, remote=f"{HOST}:{shared.port(0)}", local_port=free_port("udp"),
             calls=CALLS, rate=20, keys={"uas_port": b.local_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    with killed_on_failure(a, b):
        if during is not None:
            during(prefix)
    assert_clean(*wait_caller_first(a, b), calls=CALLS)
    return prefix


def test_a_trunks_calls_are_spread_over_both_workers(sipp: StartSipp, shared: Service) -> None:
    """One SIPp socket calls, one answers: both workers own a share of the calls, and every
    call completes, ended by the proxy (`dialog:end_dlg`, BYE both ways from the owner)."""
    before = _handoff(shared)

    def end_them(prefix: str) -> None:
        dialogs = _wait_dialogs(shared, prefix, CALLS)
        owners = _owners(dialogs)
        assert set(owners) == {"0", "1"}, owners
        for dialog in dialogs:
            assert shared.mi("dialog:end_dlg", dialog_id=dialog["ID"]) == "OK"

    prefix = _run_calls(sipp, shared, "uac_wait_bye.xml", "uas_wait_bye.xml", "trunk",
                        during=end_them)
    assert not [d for d in shared.mi("dialog:list")["Dialogs"]
                if str(d["callid"]).startswith(prefix)]
    after = _handoff(shared)
    # Everything came in on one socket per party: the messages of the other worker's calls
    # were handed to it, none was refused.
    assert after["handoff:sent"] > before["handoff:sent"], after
    assert after["handoff:sent"] == after["handoff:received"], after
    assert after["handoff:refused"] == 0, after


@pytest.mark.parametrize(("caller", "callee"), [
    ("uac.xml", "uas.xml"),
    ("uac_wait_bye.xml", SCENARIOS / "uas_hangs_up.xml"),
], ids=["caller-hangs-up", "callee-hangs-up"])
def test_a_bye_from_either_side_ends_the_dialog_on_its_owner(
    sipp: StartSipp, shared: Service, caller: str, callee: str | Path
) -> None:
    with collecting() as events:
        assert shared.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=events.socket,
                         expire=120) == "OK"
        try:
            prefix = _run_calls(sipp, shared, caller, callee, "bye")
            owners = _ended(events, prefix, CALLS)
        finally:
            shared.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=events.socket,
                      expire=0)
    assert set(owners) == {"0", "1"} and sum(owners.values()) == CALLS, owners
    assert not [d for d in shared.mi("dialog:list")["Dialogs"]
                if str(d["callid"]).startswith(prefix)]


@pytest.mark.parametrize("owner", WORKERS)
def test_hold_and_unhold_on_a_call_of_either_worker(
    sipp: StartSipp, shared: Service, owner: int
) -> None:
    """The owner sends both re-INVITEs from the shared address; the answers, whichever worker
    the kernel gives them to, reach it by the mark in its Via branch."""
    prefix = _prefix_owned_by(owner, "hold")
    uas_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_hold_restart.xml", local_port=uas_port, timeout=60,
             recv_timeout=30).wait_listening()
    a = sipp("a", SCENARIOS / "uac_hold_restart.xml", remote=f"{HOST}:{shared.port(0)}",
             local_port=free_port("udp"), keys={"uas_port": uas_port}, timeout=60,
             recv_timeout=30, extra_args=("-cid_str", f"{prefix}%u@%s"))
    with collecting() as events:
        assert shared.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket,
                         expire=120) == "OK"
        with killed_on_failure(a, b):
            (dialog,) = _wait_dialogs(shared, prefix, 1)
            callid = dialog["callid"]
            assert dialog["ID"].startswith(f"{owner}."), dialog
            for rnd, operation in enumerate(("callops:hold", "callops:unhold",
                                             "callops:hold")):
                assert shared.mi(operation, callid=callid) == "OK"
                events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                                and p["state"] == "ok", count=2 * (rnd + 1))
        a_result, b_result = wait_caller_first(a, b)
        assert_clean(a_result, b_result)
        seen = events.sequence("E_CALL_HOLD", callid, "leg", "action", "state")
        shared.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket, expire=0)
    assert len(seen) == 12, seen
    assert sorted(seen[2:4]) == [("callee", "hold", "ok"), ("caller", "hold", "ok")], seen
    for result in (a_result, b_result):
        reinvites = [m for m in received(result, "INVITE") if ";tag=" in (m.header("To") or "")]
        assert ["a=inactive" in m.body for m in reinvites] == [True, False, True]


@pytest.mark.parametrize("owner", WORKERS)
def test_blind_transfer_of_a_call_of_either_worker(
    sipp: StartSipp, shared: Service, owner: int
) -> None:
    """A calls B through the shared address; the MI transfers A to C blind. A's new INVITE
    goes to the same address with `;osid=<dialog id>`; its Call-ID hashes to the other
    worker, but it reaches the old call's owner, which links it itself: the sequence one
    process raises, and both calls on one worker."""
    b = sipp("b", CALLOPS / "uas_callee.xml", local_port=free_port("udp")).wait_listening()
    c = sipp("c", "uas.xml", local_port=free_port("udp")).wait_listening()
    prefix = _prefix_owned_by(owner, "blind", new_call_elsewhere=True)
    old = f"{prefix}1@{HOST}"
    new = f"xfer///{old}"
    dest = f"sip:c@{HOST}:{c.local_port}"
    port = shared.port(0)
    with collecting() as events:
        for event in ("E_CALL_TRANSFER", "E_DLG_STATE_CHANGED"):
            assert shared.mi("evi:subscribe", event=event, socket=events.socket,
                             expire=120) == "OK"
        a = sipp("a", SCENARIOS / "uac_blind_cross.xml", remote=f"{HOST}:{port}",
                 local_port=free_port("udp"),
                 keys={"uas_port": b.local_port, "old_port": port, "new_port": port},
                 extra_args=("-cid_str", prefix + "%u@%s"))
        with killed_on_failure(a, b, c):
            (dialog,) = _wait_dialogs(shared, prefix, 1)
            assert dialog["ID"].startswith(f"{owner}."), dialog
            assert shared.mi("callops:transfer", callid=old, leg="caller",
                             destination=dest) == "Accepted"
        a_result, c_result, b_result = wait_caller_first(a, c, b)
        assert_clean(a_result, b_result, c_result)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == new
                        and p["new_state"] == 5)
        expected = [
            ("caller", "", dest, "start", ""),
            ("caller", "", "", "notify", "100 Trying"),
            ("caller", new, dest, "start", ""),
            ("caller", new, dest, "ok", "200 OK"),
            ("caller", new, "", "notify", "200 OK"),
        ]
        assert events.sequence("E_CALL_TRANSFER", old, *TRANSFER_KEYS) == expected, (
            events.describe("E_CALL_TRANSFER"))
        owners = {callid: str(events.params(
            "E_DLG_STATE_CHANGED", lambda p, c=callid: p["callid"] == c)[0]["id"])
            .partition(".")[0] for callid in (old, new)}
        assert owners == {old: str(owner), new: str(owner)}, owners
        for event in ("E_CALL_TRANSFER", "E_DLG_STATE_CHANGED"):
            shared.mi("evi:subscribe", event=event, socket=events.socket, expire=0)
    [refer] = received(a_result, "REFER")
    assert refer.header("Refer-To") == f"<{dest};osid={dialog['ID']}>", refer.text
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest, c_invite.text


class OneSocketUA:
    """Bob and his caller on one UDP socket: what reaches it, by Call-ID."""

    def __init__(self, proxy_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.proxy = (HOST, proxy_port)
        self.contact = f"sip:bob@{HOST}:{self.port}"
        self.aor = f"sip:bob@{HOST}:{proxy_port}"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {HOST}:{self.port};branch={branch}"

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.proxy)

    def expect(self, call_id: str, first_line: str, timeout: float = 10.0
               ) -> Request | Response:
        """The next message of `call_id` that starts with `first_line` (others of the call
        skipped, those of other calls are late retransmissions)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            assert source == self.proxy, source  # from the address it sent to
            msg = parse_message(data)
            if msg.call_id == call_id and msg.start_line().startswith(first_line):
                return msg
        raise AssertionError(f"no {first_line!r} of {call_id} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


def _worker_statistics(name: str) -> list[int]:
    controller = ray.get_actor("controller", namespace="switchboard")
    handles = ray.get(controller.worker_handles.remote())
    return [int(msgpack.unpackb(ray.get(h.statistics.remote())).get(name, 0))
            for h in handles]


def _register(ua: OneSocketUA, call_id: str) -> None:
    ua.send(sip_request(
        "REGISTER", f"sip:{ua.proxy[0]}:{ua.proxy[1]}", branch=f"z9hG4bK-{call_id}",
        via=ua.via(f"z9hG4bK-{call_id}"), from_uri=ua.aor, to_uri=ua.aor, from_tag="reg",
        call_id=call_id, contact=ua.contact, extra=["Expires: 300"]))
    answer = ua.expect(call_id, "SIP/2.0 200")
    assert ua.contact in str(answer.get("contact")), answer


def _calls_reach(ua: OneSocketUA, prefix: str, calls: int) -> Counter[int]:
    """`calls` calls toward the UA's AOR, each refused (486) by its contact once it reached
    it; how many of them each worker owns."""
    owners: Counter[int] = Counter()
    for n in range(calls):
        call_id = f"{prefix}{n}@{HOST}"
        owners[hashed_worker(call_id.encode(), WORKERS)] += 1
        branch = f"z9hG4bK-{prefix}{n}"
        ua.send(invite(call_id=call_id, ruri=ua.aor, branch=branch, via=ua.via(branch),
                       contact=f"sip:alice@{HOST}:{ua.port}"))
        relayed = ua.expect(call_id, "INVITE ")
        assert isinstance(relayed, Request) and relayed.uri == ua.contact, relayed
        ua.send(reply(relayed, 486, contact=None))
        ua.expect(call_id, "SIP/2.0 486")
        ua.send(sip_request("ACK", ua.aor, branch=branch, via=ua.via(branch),
                            to_tag="bob-tag", call_id=call_id, contact=None))
    return owners


def test_a_user_registered_through_one_worker_is_called_through_both(shared: Service
                                                                       ) -> None:
    """One UA socket registers Bob (the REGISTER's Call-ID hashes to one worker), then calls
    him with Call-IDs that hash to both: every call reaches his contact, from the shared
    address, whichever worker owns it."""
    ua = OneSocketUA(shared.port(0))
    prefix = _prefix("reg")
    try:
        reg_id = f"{prefix}register@{HOST}"
        registrar = hashed_worker(reg_id.encode(), WORKERS)
        before = _worker_statistics("registrar:accepted_regs")
        contacts = sum(_worker_statistics("usrloc:registered_contacts"))
        _register(ua, reg_id)
        after = _worker_statistics("registrar:accepted_regs")
        assert [a - b for a, b in zip(after, before, strict=True)] == [
            int(w == registrar) for w in WORKERS]
        owners = _calls_reach(ua, prefix, CALLS * 2)
        assert owners[1 - registrar] > 0, owners  # calls of the other worker among them
        # The node counts Bob once: only the worker that took the REGISTER counts him.
        assert sum(_worker_statistics("usrloc:registered_contacts")) == contacts + 1
        assert sum(_worker_statistics("handoff:binding_updates_applied")) >= 1
    finally:
        ua.close()


def _owned_by(worker: int, prefix: str) -> str:
    """A Call-ID of `prefix` that hashes to `worker`."""
    return next(c for c in (f"{prefix}{n}@{HOST}" for n in range(1000))
                if hashed_worker(c.encode(), WORKERS) == worker)


async def test_a_websocket_client_is_registered_and_called_through_one_address(
        shared: Service) -> None:
    """A browser-like client opens one WebSocket to the node's `ws:` address (the kernel
    gives it to one worker) and registers with a `.invalid` Contact; calls from a UDP caller
    owned by either worker reach it over that one connection, and its answers come back.
    When it closes, neither worker has the binding any more: 480."""
    port = shared.port(0)
    prefix = _prefix("ws")
    aor = f"sip:wsbob@{HOST}:{port}"
    bob = await WsParty.connect(shared.ws_port, f"{secrets.token_hex(4)}.invalid")
    alice = Party()
    node = Address("udp", HOST, port)

    async def call(call_id: str) -> int:
        """Alice calls Bob's AOR: the final answer she gets (Bob refuses what reaches him)."""
        alice.send(invite(call_id=call_id, ruri=aor, contact=alice.contact,
                          via=f"SIP/2.0/UDP {HOST}:{alice.port};branch=z9hG4bK-{call_id}"),
                   node)
        if bob.ws.closed:
            relayed = None
        else:
            relayed = await bob.expect("INVITE")
            assert isinstance(relayed, Request) and relayed.call_id == call_id
            assert relayed.uri == bob.contact
            await bob.send(reply(relayed, 486, contact=None))
        while True:
            answer, source = await alice.expect("SIP/2.0 ")
            assert isinstance(answer, Response) and source == (HOST, port)
            if answer.status >= 200:
                break
        alice.send(sip_request("ACK", aor, branch=f"z9hG4bK-{call_id}", to_tag="bob-tag",
                               call_id=call_id, contact=None,
                               via=f"SIP/2.0/UDP {HOST}:{alice.port};branch=z9hG4bK-{call_id}"),
                   node)
        return answer.status

    try:
        before = await asyncio.to_thread(_handoff, shared)
        registered = sum(await asyncio.to_thread(_worker_statistics,
                                                 "usrloc:registered_contacts"))
        branch = f"z9hG4bK-{prefix}reg"
        await bob.send(sip_request(
            "REGISTER", f"sip:{HOST}:{port}", branch=branch, via=bob.via(branch),
            from_uri=aor, to_uri=aor, from_tag="reg", call_id=f"{prefix}register@{HOST}",
            contact=bob.contact, extra=["Expires: 300"]))
        assert (await bob.expect("SIP/2.0 ")).status == 200  # type: ignore[union-attr]
        for worker in WORKERS:
            for n in range(2):
                assert await call(_owned_by(worker, f"{prefix}{worker}-{n}-")) == 486
        after = await asyncio.to_thread(_handoff, shared)
        # One worker holds Bob's connection: the other's calls went through it.
        assert after["handoff:sent"] > before["handoff:sent"], after
        assert after["handoff:refused"] == before["handoff:refused"], after

        await bob.close()
        deadline = time.monotonic() + 10
        while sum(await asyncio.to_thread(_worker_statistics, "usrloc:registered_contacts")
                  ) != registered:
            assert time.monotonic() < deadline, "Bob's binding outlived his connection"
            await asyncio.sleep(0.1)
        for worker in WORKERS:
            assert await call(_owned_by(worker, f"{prefix}gone-{worker}-")) == 480
    finally:
        await bob.close()
        alice.close()


def test_a_restarted_worker_takes_its_share_again(sipp: StartSipp, shared: Service) -> None:
    """Ray restarts a killed worker: it binds the shared address and its channel socket
    again, and the calls that hash to it are its own again, all of them clean. It gets the
    node's registrations back from the other worker: a user registered through it before
    the restart is reached by calls owned by either."""
    ua = OneSocketUA(shared.port(0))
    try:
        prefix = _prefix("rereg")
        reg_id = next(f"{prefix}register-{n}@{HOST}" for n in range(100)
                      if hashed_worker(f"{prefix}register-{n}@{HOST}".encode(), WORKERS) == 1)
        _register(ua, reg_id)
        controller = ray.get_actor("controller", namespace="switchboard")
        handle = ray.get(controller.worker_handles.remote())[1]
        old_pid = ray.get(controller.workers_info.remote())[1]["pid"]
        ray.kill(handle, no_restart=False)
        deadline = time.monotonic() + 60.0
        while True:
            info = ray.get(controller.workers_info.remote())[1]
            if info.get("pid") not in (None, old_pid):
                break
            assert time.monotonic() < deadline, "worker 1 was not restarted within 60 s"
            time.sleep(0.2)

        def owned(prefix: str) -> None:
            owners = _owners(_wait_dialogs(shared, prefix, CALLS))
            assert set(owners) == {"0", "1"}, owners
            for dialog in _wait_dialogs(shared, prefix, CALLS):
                assert shared.mi("dialog:end_dlg", dialog_id=dialog["ID"]) == "OK"

        _run_calls(sipp, shared, "uac_wait_bye.xml", "uas_wait_bye.xml", "restart", during=owned)
        handles = ray.get(controller.worker_handles.remote())
        stats = [msgpack.unpackb(ray.get(h.statistics.remote())) for h in handles]
        assert all(s["handoff:refused"] == 0 for s in stats), stats
        assert stats[1]["handoff:binding_updates_applied"] >= 1, stats  # the table
        owners = _calls_reach(ua, prefix, CALLS)
        assert set(owners) == {0, 1}, owners
    finally:
        ua.close()
