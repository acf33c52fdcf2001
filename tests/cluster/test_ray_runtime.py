"""The `ray` runtime on a real local Ray: two worker actors, SIP calls through both, the MI
over the controller, the actor-handle Python API, events from every worker, and a worker
killed mid-call that comes back with its dialogs (snapshots kept by the controller).

One service for the module: `serve` runs in this process (the test process is the Ray driver
and runs the MI), with 2 workers: worker 0 listens on the base port B, worker 1 on B + 1.
SIPp callers aim at one worker's port or the other's; the callee is SIPp on its own port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from switchboard.api import CommandError
from switchboard.config import Config, ListenSocket, apply_overrides
from tests.cluster.ray_service import WEBHOOK_SECRET, Service, import_ray, service_config
from tests.support.events import EventCollector, collecting
from tests.support.ports import HOST, free_port, free_port_block
from tests.support.sipp import (
    SipMessage,
    Sipp,
    StartSipp,
    assert_clean,
    killed_on_failure,
    received,
    wait_caller_first,
    wait_clean,
)
from tests.support.webhooks import WebhookReceiver, verify

ray = import_ray()

from switchboard.cluster.ray_runtime import (  # noqa: E402  (needs ray)
    ServiceSpec,
    serve,
)

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

WORKERS = 2
SCENARIOS = Path(__file__).parent / "scenarios"


def _controller() -> Any:
    return ray.get_actor("controller", namespace="switchboard")


def _worker_stats() -> list[dict[str, int]]:
    """Each worker's own statistics, asked of the worker actors directly."""
    handles = ray.get(_controller().worker_handles.remote())
    return [msgpack.unpackb(ray.get(h.statistics.remote())) for h in handles]


def _start_calls(
    sipp: StartSipp,
    service: Service,
    worker: int,
    *,
    calls: int,
    uas_scenario: str = "uas.xml",
    uac_scenario: str = "uac.xml",
    rate: float | None = None,
    prefix: str | None = None,
    trace_msg: bool = True,
    extra: tuple[str, ...] = (),
) -> tuple[Sipp, Sipp]:
    """A SIPp callee on its own port and a SIPp caller aimed at `worker`'s port."""
    uas_port = free_port("udp")
    uas = sipp(f"uas-w{worker}", uas_scenario, local_port=uas_port, calls=calls,
               trace_msg=trace_msg).wait_listening()
    uac = sipp(
        f"uac-w{worker}",
        uac_scenario,
        remote=f"{HOST}:{service.port(worker)}",
        local_port=free_port("udp"),
        calls=calls,
        rate=rate,
        keys={"uas_port": uas_port},
        trace_msg=trace_msg,
        # SIPp expands %u (call number) and %s (local IP) in -cid_str.
        extra_args=(("-cid_str", f"{prefix}%u@%s") if prefix else ()) + extra,
    )
    return uas, uac


def _wait_dialogs(list_dialogs: Callable[[], list[dict[str, Any]]], prefix: str, count: int,
                  timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll until `count` confirmed dialogs (state 4) whose Call-ID starts with `prefix`."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [d for d in list_dialogs()
                 if str(d["callid"]).startswith(prefix) and d["state"] == 4]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(found)} of {count} confirmed dialogs {prefix}* after {timeout} s")


def _prefix(tag: str) -> str:
    return f"sb-ray-{tag}-{secrets.token_hex(3)}-"


# -- tests ----------------------------------------------------------------------------------


def test_workers_listen_on_base_port_plus_index(service: Service) -> None:
    """Worker i binds every configured socket at port + i, the controller says where, and
    /readyz says ready once every worker answers."""
    b = service.base
    assert [str(a) for a in service.sb.listeners] == [
        f"udp:{HOST}:{b}", f"tcp:{HOST}:{b}", f"udp:{HOST}:{b + 1}", f"tcp:{HOST}:{b + 1}"]
    info = ray.get(_controller().workers_info.remote())
    assert [w["index"] for w in info] == [0, 1]
    assert info[1]["listeners"] == [["udp", HOST, b + 1], ["tcp", HOST, b + 1]]
    assert info[0]["pid"] != info[1]["pid"]
    assert service.sb.mi is not None
    ready = f"http://{HOST}:{service.sb.mi.port}/readyz"
    with urllib.request.urlopen(ready, timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"ready\n")


def test_calls_through_both_workers(sipp: StartSipp, service: Service) -> None:
    """50 calls to worker 0's port and 50 to worker 1's at the same time: all succeed, each
    worker handled its own 50, and statistics:get sums the workers."""
    calls = 50
    before = _worker_stats()
    pairs = [_start_calls(sipp, service, w, calls=calls, rate=50, trace_msg=False)
             for w in range(WORKERS)]
    results = [wait_caller_first(uac, uas) for uas, uac in pairs]
    for uac_and_uas in results:
        assert_clean(*uac_and_uas, calls=calls)
    after = _worker_stats()
    for w in range(WORKERS):
        processed = after[w]["dialog:processed_dialogs"] - before[w]["dialog:processed_dialogs"]
        assert processed == calls, f"worker {w} processed {processed} dialogs"
    merged = service.mi("statistics:get", statistics=["dialog:", "core:rcv_requests"])
    assert merged["dialog:processed_dialogs"] == sum(
        s["dialog:processed_dialogs"] for s in after)
    assert merged["core:rcv_requests"] >= sum(s["core:rcv_requests"] for s in after)
    assert merged["dialog:active_dialogs"] == 0


def test_dialog_list_and_end_dlg_span_both_workers(sipp: StartSipp, service: Service) -> None:
    """dialog:list merges the workers' dialogs (ids name the owner); dialog:end_dlg by Call-ID
    reaches the owner wherever it is, and both sides of every call get a BYE."""
    prefixes = [_prefix(f"w{w}") for w in range(WORKERS)]
    pairs = [_start_calls(sipp, service, w, calls=2, uas_scenario="uas_wait_bye.xml",
                          uac_scenario="uac_wait_bye.xml", prefix=prefixes[w])
             for w in range(WORKERS)]
    with killed_on_failure(*(run for pair in pairs for run in pair)):
        listed = {w: _wait_dialogs(lambda: service.mi("dialog:list")["Dialogs"], prefixes[w], 2)
                  for w in range(WORKERS)}
        for w, dialogs in listed.items():
            assert all(d["ID"].startswith(f"{w:x}.") for d in dialogs), dialogs
        one = listed[1][0]
        assert service.mi("dialog:list", callid=one["callid"])["Dialog"]["ID"] == one["ID"]
        for dialogs in listed.values():
            for dialog in dialogs:
                assert service.mi("dialog:end_dlg", dialog_id=dialog["callid"]) == "OK"
    for uas, uac in pairs:
        wait_clean(uac, uas, calls=2)


def test_actor_handle_api(sipp: StartSipp, service: Service) -> None:
    """The controller found by name answers list_dialogs and end_dialog (a call on worker 1,
    by its dialog id: both sides get a BYE), and refuses with the MI's errors."""
    controller = ray.get_actor("controller", namespace="switchboard")
    prefix = _prefix("api")
    uas, uac = _start_calls(sipp, service, 1, calls=1, uas_scenario="uas_wait_bye.xml",
                            uac_scenario="uac_wait_bye.xml", prefix=prefix)
    with killed_on_failure(uac, uas):
        (dialog,) = _wait_dialogs(lambda: ray.get(controller.list_dialogs.remote()), prefix, 1)
        assert dialog["ID"].startswith("1.")
        callid = dialog["callid"]
        assert [d["ID"] for d in ray.get(controller.list_dialogs.remote(callid))] == [dialog["ID"]]
        refusals: list[tuple[Any, int, str]] = [
            (controller.end_dialog.remote("0.fffffff"), 404, "Dialog not found"),
            (controller.call_hold.remote("no-such-call@nowhere"), 404, "Dialog not found"),
            (controller.call_unhold.remote("no-such-call@nowhere", "caller"), 404,
             "Dialog not found"),
            (controller.call_transfer.remote(callid, "nobody", "sip:x@127.0.0.1"), -32602,
             "Invalid params"),
            (controller.end_dialog.remote(callid, "no colon here"), -32602, "Invalid params"),
            (controller.subscribe.remote("E_NOPE", "udp:127.0.0.1:9"), 400,
             "Bad parameter value"),
            (controller.subscribe.remote("E_CALL_HOLD", "smoke:signal"), -32602,
             "Invalid params"),
        ]
        for ref, code, message in refusals:
            with pytest.raises(CommandError) as refused:
                ray.get(ref)
            assert (refused.value.code, refused.value.message) == (code, message)
        ray.get(controller.end_dialog.remote(dialog["ID"]))
    wait_clean(uac, uas)
    assert ray.get(controller.list_dialogs.remote(callid)) == []


@contextlib.contextmanager
def _state_changes_to(service: Service, socket: str) -> Iterator[None]:
    """E_DLG_STATE_CHANGED subscribed to `socket` through the MI for the block, then
    unsubscribed."""
    assert service.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=socket,
                      expire=120) == "OK"
    try:
        yield
    finally:
        service.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=socket, expire=0)


def _one_call_per_worker(sipp: StartSipp, service: Service, prefixes: list[str]) -> None:
    """One SIPp call to each worker, its Call-ID starting with that worker's prefix, run to
    its end."""
    pairs = [_start_calls(sipp, service, w, calls=1, prefix=prefixes[w])
             for w in range(WORKERS)]
    for uas, uac in pairs:
        wait_clean(uac, uas)


def test_events_from_both_workers_reach_a_subscriber(sipp: StartSipp, service: Service) -> None:
    """One evi:subscribe, one call on each worker: the subscriber gets every state change of
    both calls, each dialog id naming the worker that owns it."""
    prefixes = [_prefix(f"ev{w}") for w in range(WORKERS)]
    with collecting() as events, _state_changes_to(service, events.socket):
        _one_call_per_worker(sipp, service, prefixes)
        for w in range(WORKERS):
            last = events.wait_for(
                "E_DLG_STATE_CHANGED",
                lambda p, w=w: p["callid"].startswith(prefixes[w]) and p["new_state"] == 5)
            states = events.sequence("E_DLG_STATE_CHANGED", last["callid"], "id", "new_state")
            assert {i for i, _ in states} == {last["id"]}
            assert last["id"].startswith(f"{w:x}.")
            assert [s for _, s in states][-2:] == [4, 5], states


def test_a_webhook_gets_the_events_of_both_workers_signed(
    sipp: StartSipp, service: Service,
) -> None:
    """The controller's bus POSTs every worker's events to a webhook, signed with the
    configured secret, each call's state changes in order; its counters join the statistics."""
    prefixes = [_prefix(f"wh{w}") for w in range(WORKERS)]
    secret = WEBHOOK_SECRET.encode()
    with WebhookReceiver(secret) as hooks, _state_changes_to(service, hooks.url):
        _one_call_per_worker(sipp, service, prefixes)
        hooks.wait_for(lambda _: sum(r.json["params"]["new_state"] == 5
                                     for r in hooks.delivered()) == WORKERS,
                       "both calls ended")
    for request in hooks.requests():
        assert verify(secret, request.signature, request.body)
        assert not verify(b"wrong", request.signature, request.body)
    for w in range(WORKERS):
        states = [(r.json["params"]["id"], r.json["params"]["old_state"],
                   r.json["params"]["new_state"]) for r in hooks.delivered()
                  if r.json["params"]["callid"].startswith(prefixes[w])]
        assert {i for i, _, _ in states} == {states[-1][0]}
        assert states[-1][0].startswith(f"{w:x}.")
        assert all(a[2] == b[1] for a, b in itertools.pairwise(states)), states
        assert states[-1][2] == 5
    stats = service.mi("statistics:get", statistics=["evi:webhook_delivered_events"])
    assert stats["evi:webhook_delivered_events"] >= len(hooks.delivered())


def test_second_serve_in_the_same_cluster_is_refused(service: Service) -> None:
    """The controller's name is the service: a second `serve` says so instead of starting."""
    config = service_config(free_port_block(WORKERS), free_port("tcp"), WORKERS)
    with pytest.raises(OSError, match="already runs"):
        service.runner.run(serve(config), timeout=30)
    assert service.mi("dialog:list") == {"Dialogs": []}


def test_service_spec_round_trips_through_msgpack() -> None:
    """What the driver tells the actors is rebuilt exactly on the other side; worker i's
    sockets are the configured ones at port + i (port 0 stays 0)."""
    config = apply_overrides(
        Config(), listen=["udp:127.0.0.1:5060", "tcp:127.0.0.1:0"], workers=3, mode="callid",
        event_datagram=["udp:127.0.0.1:9999"])
    spec = ServiceSpec.from_config(config)
    assert ServiceSpec.unpack(spec.pack()) == spec
    assert spec.workers == 3 and spec.config.callops.mode == "callid"
    assert spec.config.mi.http is None  # the driver serves the MI, not the workers
    assert ("E_CALL_HOLD", "udp:127.0.0.1:9999") in spec.subscriptions
    assert spec.sockets(2) == [ListenSocket("udp", "127.0.0.1", 5062),
                               ListenSocket("tcp", "127.0.0.1", 0)]
    # Everything else the workers build themselves from is the configuration itself.
    assert dataclasses.replace(spec.config, mi=config.mi) == config


def _replica(controller: Any, worker: int, callid: str) -> dict[str, Any] | None:
    """The snapshot the controller keeps of `callid`'s dialog on `worker`, if any."""
    for snapshot in ray.get(controller.replicated.remote(worker)):
        if snapshot["call_id"] == callid:
            return dict(snapshot)
    return None


def _wait_replica(controller: Any, worker: int, callid: str,
                  until: Callable[[dict[str, Any] | None], bool], timeout: float = 10.0
                  ) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        replica = _replica(controller, worker, callid)
        if until(replica):
            return replica
        assert time.monotonic() < deadline, f"controller's copy of {callid}: {replica}"
        time.sleep(0.1)


def _hold_events(events: EventCollector, callid: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_CALL_HOLD", callid, "leg", "action", "state")


def _cseq(message: SipMessage) -> int:
    return int((message.header("CSeq") or "0").split()[0])


def _origin_version(message: SipMessage) -> int:
    (origin,) = [ln for ln in message.body.splitlines() if ln.startswith("o=")]
    return int(origin.split()[2])


def test_a_killed_worker_comes_back_with_its_dialogs(sipp: StartSipp, service: Service) -> None:
    """Ray restarts a worker that dies (here: ray.kill with restart); it binds its ports
    again, restores the confirmed dialogs the controller kept snapshots of, and takes new
    calls. A call A→B through worker 1 is put on hold before the kill; after the restart it
    is listed again as it was, `callops:unhold` and `callops:hold` work on it (each party
    gets its re-INVITE with the next CSeq of the sequence the proxy speaks in, and the next
    SDP version: the shifts and offer versions from before the crash are kept), and A's BYE
    reaches B shifted past all three re-INVITEs."""
    controller = _controller()
    prefix = _prefix("crash")
    uas_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_hold_restart.xml", local_port=uas_port, timeout=120,
             recv_timeout=60).wait_listening()
    a = sipp("a", SCENARIOS / "uac_hold_restart.xml", remote=f"{HOST}:{service.port(1)}",
             local_port=free_port("udp"), keys={"uas_port": uas_port}, timeout=120,
             recv_timeout=60, extra_args=("-cid_str", f"{prefix}%u@%s"))
    with collecting() as events:
        with killed_on_failure(a, b):
            (before,) = _wait_dialogs(lambda: service.mi("dialog:list")["Dialogs"], prefix, 1)
            callid = before["callid"]
            assert before["ID"].startswith("1.")
            assert service.mi("evi:subscribe", event="E_CALL_HOLD", socket=events.socket,
                              expire=120) == "OK"
            assert service.mi("callops:hold", callid=callid) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                            and p["state"] == "ok", count=2)
            # The controller has the held state before the worker goes.
            _wait_replica(controller, 1, callid,
                          lambda r: r is not None and r.get("hold") == [12, 12])
            before = next(d for d in service.mi("dialog:list")["Dialogs"]
                          if d["callid"] == callid)

            handle = ray.get(controller.worker_handles.remote())[1]
            old_pid = ray.get(controller.workers_info.remote())[1]["pid"]
            ray.kill(handle, no_restart=False)
            deadline = time.monotonic() + 30.0
            while ray.get(controller.workers_info.remote())[1]["pid"] == old_pid:
                assert time.monotonic() < deadline, "worker 1 was not restarted within 30 s"
                time.sleep(0.2)

            # Listed again, as it was (its start and timeout rebuilt from the snapshot).
            (after,) = [d for d in service.mi("dialog:list")["Dialogs"]
                        if d["callid"] == callid]
            times = ("timestart", "datestart", "timeout", "dateout")
            assert {k: v for k, v in after.items() if k not in times} == {
                k: v for k, v in before.items() if k not in times}
            for key in ("timestart", "timeout"):
                assert abs(after[key] - before[key]) <= 2, (key, before, after)
            stats = ray.get(ray.get(controller.worker_handles.remote())[1].statistics.remote())
            assert msgpack.unpackb(stats)["dialog:restored_dialogs"] >= 1

            # Call operations on the restored dialog: unhold, then hold again.
            assert service.mi("callops:unhold", callid=callid) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                            and p["state"] == "ok", count=4)
            assert service.mi("callops:hold", callid=callid) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                            and p["state"] == "ok", count=6)
        a_result, b_result = wait_caller_first(a, b)
        assert_clean(a_result, b_result)
        # Three rounds: both re-INVITEs go out (`start`, in the proxy's order: caller first
        # on hold, callee first on unhold), then both answers come (`ok`, as the parties
        # answer).
        seen = _hold_events(events, callid)
        assert len(seen) == 12, events.describe("E_CALL_HOLD")
        for i, (action, first, second) in enumerate((("hold", "caller", "callee"),
                                                      ("unhold", "callee", "caller"),
                                                      ("hold", "caller", "callee"))):
            rnd = seen[4 * i:4 * i + 4]
            assert rnd[:2] == [(first, action, "start"), (second, action, "start")], seen
            assert sorted(rnd[2:]) == [("callee", action, "ok"), ("caller", action, "ok")], seen
    # The proxy speaks for B toward A (B never sent a request: 1, 2, 3) and for A toward B
    # (A's INVITE was 1: 2, 3, 4), each offer one o= version above the last one.
    for result, first in ((a_result, 1), (b_result, 2)):
        reinvites = [m for m in received(result, "INVITE") if ";tag=" in (m.header("To") or "")]
        assert [_cseq(m) for m in reinvites] == [first, first + 1, first + 2], [
            m.text for m in reinvites]
        versions = [_origin_version(m) for m in reinvites]
        assert versions == [versions[0], versions[0] + 1, versions[0] + 2], versions
        assert ["a=inactive" in m.body for m in reinvites] == [True, False, True]
    # A's BYE (its CSeq 2) reached B past the proxy's three re-INVITEs in A's sequence.
    (bye,) = received(b_result, "BYE")
    assert _cseq(bye) == 5, bye.text
    assert callid not in {d["callid"] for d in service.mi("dialog:list")["Dialogs"]}
    # The controller lets go of the ended call's snapshot.
    _wait_replica(controller, 1, callid, lambda r: r is None)

    # The restarted worker takes new calls.
    uas, uac = _start_calls(sipp, service, 1, calls=5, rate=10)
    wait_clean(uac, uas, calls=5)
    assert service.mi("statistics:get", statistics=["dialog:active_dialogs"]) == {
        "dialog:active_dialogs": 0}
