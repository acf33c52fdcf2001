"""`switchboard serve --runtime ray` killed (SIGKILL) under a call: the detached controller
and workers keep serving (the held call stays up, new calls go through, a subscriber made
before keeps getting events), Ray removes the dead driver's lease, and a new `serve` with
the same command line attaches to the running controller: the held call is listed, held
and ended from its MI, the subscription is still counted, and SIGTERM to it removes the whole
service. While a `serve` lives, another one refuses to start (test_ray_runtime).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ray_service import import_ray, until
from tests.support.events import collecting
from tests.support.ports import HOST, free_port, free_port_block
from tests.support.server import StartServer, SwitchboardServer
from tests.support.sipp import (
    StartSipp,
    assert_clean,
    killed_on_failure,
    wait_caller_first,
    wait_clean,
)

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).parent / "scenarios"


def _named(name: str) -> bool:
    try:
        ray.get_actor(name, namespace="switchboard")
    except ValueError:
        return False
    return True


def _confirmed(server: SwitchboardServer, prefix: str) -> dict[str, Any] | None:
    for dialog in server.mi_result("dialog:list")["Dialogs"]:
        if str(dialog["callid"]).startswith(prefix) and dialog["state"] == 4:
            return dict(dialog)
    return None


def test_a_killed_serve_leaves_the_service_running_and_a_new_one_attaches(
    no_controller_left: str, switchboard_server: StartServer, sipp: StartSipp,
) -> None:
    base = free_port_block(2)
    args = ("--runtime", "ray", "--ray-address", no_controller_left, "--workers", "2")
    first = switchboard_server(*args, name="switchboard-ray", port=base, ready_timeout=90.0)
    prefix = f"sb-driver-{time.monotonic_ns()}-"
    uas_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_held_ended.xml", local_port=uas_port, timeout=180,
             recv_timeout=150).wait_listening()
    a = sipp("a", SCENARIOS / "uac_held_ended.xml", remote=f"{HOST}:{base}",
             local_port=free_port("udp"), keys={"uas_port": uas_port}, timeout=180,
             recv_timeout=150, extra_args=("-cid_str", f"{prefix}%u@%s"))
    with collecting() as events, killed_on_failure(a, b):
        for event in ("E_DLG_STATE_CHANGED", "E_CALL_HOLD"):
            assert first.mi_result("evi:subscribe", event=event, socket=events.socket,
                                   expire=300) == "OK"
        held = until("the call confirmed", lambda: _confirmed(first, prefix))
        subscriptions = first.mi_result("statistics:get", statistics=["evi:subscriptions"])

        first.proc.kill()
        first.proc.wait(10)
        until("the dead driver's lease removed", lambda: not _named("driver"))
        assert _named("controller")

        # Still serving: a new call (the workers share the base port), its events at the
        # subscriber.
        uas = sipp("uas", "uas.xml", local_port=free_port("udp")).wait_listening()
        uac = sipp("uac", "uac.xml", remote=f"{HOST}:{base}", local_port=free_port("udp"),
                   keys={"uas_port": uas.local_port}, extra_args=("-cid_str", f"{prefix}new"))
        wait_clean(uac, uas)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == f"{prefix}new"
                        and p["new_state"] == 5)

        second = switchboard_server(*args, name="switchboard-ray-2", port=base,
                                    ready_timeout=90.0)
        assert "attached to the running switchboard controller" in second.output
        assert _confirmed(second, prefix) == held
        assert second.mi_result("statistics:get",
                                statistics=["evi:subscriptions"]) == subscriptions
        assert second.mi_result("callops:hold", callid=held["callid"]) == "OK"
        events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == held["callid"]
                        and p["state"] == "ok", count=2)
        assert second.mi_result("dialog:end_dlg", dialog_id=held["ID"]) == "OK"
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == held["callid"]
                        and p["new_state"] == 5)
    assert_clean(*wait_caller_first(a, b))
    assert second.stop(timeout=15.0) == 0, second.describe()
    until("the controller removed", lambda: not _named("controller"))
    until("the workers removed", lambda: not (_named("worker-0") or _named("worker-1")))
