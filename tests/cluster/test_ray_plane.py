"""The Ray runtime's control plane on a real local Ray: nothing per call goes through the
controller, and the controller may die.

- Calls on both workers reach a socket subscriber straight from the workers: the controller
  receives none of their events.
- The controller killed (and restarted by Ray) under a held SIPp call: the workers keep
  serving (same processes), the restarted controller has the run-time subscriptions again
  (from Ray's GCS) and the call's snapshot (each worker sends all again); the call's worker
  killed after that comes back with it, and with the subscriptions; the call is listed, held
  and ended from the MI, and the subscribers made before the restart — a socket and an actor
  handle — get those events.

One service for the module (2 workers; worker i on base port + i), `serve` in this process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.cluster.ray_service import Service, import_ray, until
from tests.support.events import collecting
from tests.support.ports import HOST, free_port
from tests.support.sipp import StartSipp, assert_clean, killed_on_failure, wait_caller_first

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).parent / "scenarios"


class _Collector:
    """An actor subscriber: keeps the (event, params) pairs `on_events` is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_events(self, events: list[Any]) -> None:
        self.events.extend(events)

    def got(self) -> list[Any]:
        return list(self.events)


def _controller() -> Any:
    return ray.get_actor("controller", namespace="switchboard")


def _listed(service: Service, callid: str) -> dict[str, Any] | None:
    for dialog in service.mi("dialog:list")["Dialogs"]:
        if dialog["callid"] == callid and dialog["state"] == 4:
            return dict(dialog)
    return None


def _replica(controller: Any, worker: int, callid: str) -> dict[str, Any] | None:
    for snapshot in ray.get(controller.replicated.remote(worker)):
        if snapshot["call_id"] == callid:
            return dict(snapshot)
    return None


def _controller_pid(controller: Any) -> int | None:
    ready = msgpack.unpackb(ray.get(controller.ready.remote(), timeout=10))
    return None if "error" in ready else int(ready["pid"])


def _pids() -> list[int]:
    return [int(w["pid"]) for w in ray.get(_controller().workers_info.remote())]


def test_call_events_reach_the_sinks_without_the_controller(sipp: StartSipp,
                                                             service: Service) -> None:
    """Ten calls on each worker: a socket subscriber gets every state change of each, from
    the workers themselves; the controller receives none of those events."""
    controller = _controller()
    prefixes = [f"sb-plane-ev{w}-{time.monotonic_ns()}-" for w in range(2)]
    before = ray.get(controller.plane_statistics.remote())
    with collecting() as events:
        assert service.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=events.socket,
                          expire=120) == "OK"
        try:
            runs = []
            for worker, prefix in enumerate(prefixes):
                uas = sipp(f"uas{worker}", "uas.xml", local_port=free_port("udp"),
                           calls=10, trace_msg=False).wait_listening()
                uac = sipp(f"uac{worker}", "uac.xml", remote=f"{HOST}:{service.port(worker)}",
                           local_port=free_port("udp"), calls=10, rate=20, trace_msg=False,
                           keys={"uas_port": uas.local_port},
                           extra_args=("-cid_str", prefix + "%u@%s"))
                runs.append((uac, uas))
            for uac, uas in runs:
                assert_clean(*wait_caller_first(uac, uas), calls=10)
            for worker, prefix in enumerate(prefixes):
                events.wait_for("E_DLG_STATE_CHANGED",
                                lambda p, prefix=prefix: p["callid"].startswith(prefix)
                                and p["new_state"] == 5, count=10)
                ended = events.params("E_DLG_STATE_CHANGED",
                                      lambda p, prefix=prefix: p["callid"].startswith(prefix)
                                      and p["new_state"] == 5)
                assert {p["id"].partition(".")[0] for p in ended} == {f"{worker:x}"}
        finally:
            service.mi("evi:subscribe", event="E_DLG_STATE_CHANGED", socket=events.socket,
                       expire=0)
    after = ray.get(controller.plane_statistics.remote())
    assert after["events"] == before["events"], (before, after)
    assert after["links"] == before["links"], (before, after)


def test_a_killed_controller_comes_back_with_calls_and_subscriptions(
    sipp: StartSipp, service: Service,
) -> None:
    controller = _controller()
    prefix = f"sb-plane-ctl-{time.monotonic_ns()}-"
    uas_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_held_ended.xml", local_port=uas_port, timeout=180,
             recv_timeout=150).wait_listening()
    a = sipp("a", SCENARIOS / "uac_held_ended.xml", remote=f"{HOST}:{service.port(1)}",
             local_port=free_port("udp"), keys={"uas_port": uas_port}, timeout=180,
             recv_timeout=150, extra_args=("-cid_str", f"{prefix}%u@%s"))
    collector = ray.remote(_Collector).remote()
    with collecting() as events, killed_on_failure(a, b):
        for event in ("E_DLG_STATE_CHANGED", "E_CALL_HOLD"):
            assert service.mi("evi:subscribe", event=event, socket=events.socket,
                              expire=300) == "OK"
        # An actor subscriber too: kept in Ray's GCS (pickled) like the socket ones.
        ray.get(controller.subscribe.remote("E_CALL_HOLD", collector, 300))
        try:
            before = until("the call confirmed", lambda: next(
                (d for d in service.mi("dialog:list")["Dialogs"]
                 if d["callid"].startswith(prefix) and d["state"] == 4), None))
            callid = before["callid"]
            assert before["ID"].startswith("1.")
            until("the controller's snapshot", lambda: _replica(controller, 1, callid))
            subscriptions = service.mi("statistics:get", statistics=["evi:subscriptions"])
            pids = _pids()
            controller_pid = _controller_pid(controller)

            ray.kill(controller, no_restart=False)
            until("the controller restarted",
                   lambda: _controller_pid(controller) not in (None, controller_pid))
            # The workers served on: the same processes, taken back by the new controller.
            assert _pids() == pids
            # It has the call's snapshot again (the worker sent all of its dialogs) and the
            # run-time subscriptions (from Ray's GCS).
            until("the snapshot sent again", lambda: _replica(controller, 1, callid))
            assert service.mi("statistics:get",
                              statistics=["evi:subscriptions"]) == subscriptions
            assert _listed(service, callid) is not None

            # The call's worker killed now: it comes back with the call (from the new
            # controller's copy) and with the subscriptions (from the new controller).
            handle = ray.get(controller.worker_handles.remote())[1]
            ray.kill(handle, no_restart=False)
            until("worker 1 restarted", lambda: _pids()[1] != pids[1])
            after = until("the call listed again", lambda: _listed(service, callid))
            assert after["ID"] == before["ID"]

            assert service.mi("callops:hold", callid=callid) == "OK"
            events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid
                            and p["state"] == "ok", count=2)
            # The actor subscribed before the controller's restart gets them too.
            until("the actor subscriber's hold events", lambda: len([
                e for e in ray.get(collector.got.remote())
                if e[0] == "E_CALL_HOLD" and e[1]["callid"] == callid
                and e[1]["state"] == "ok"]) >= 2)
            assert service.mi("dialog:end_dlg", dialog_id=before["ID"]) == "OK"
            events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == callid
                            and p["new_state"] == 5)
        finally:
            for event in ("E_DLG_STATE_CHANGED", "E_CALL_HOLD"):
                service.mi("evi:subscribe", event=event, socket=events.socket, expire=0)
            ray.get(_controller().subscribe.remote("E_CALL_HOLD", collector, 0))
    assert_clean(*wait_caller_first(a, b))
    assert _listed(service, callid) is None
