"""Call operations across the workers of the `ray` runtime (issue 5), with SIPp as every party.

Worker 0 listens on the base port B, worker 1 on B + 1 (conftest's `service`). The transferee
A is a SIPp UAC whose old call goes through one worker and whose new call SIPp sends to the
other (`setdest` in tests/cluster/scenarios/uac_*_cross.xml), so the worker that sees the new
INVITE does not own the dialog it links to: the link and the new call's answer travel through
the controller. Each test checks the exact E_CALL_TRANSFER sequence of every dialog involved
against the one the same transfer gives in one process (tests/interop/test_baresip_callops.py:
`start` with the REFER, the transferee's `notify`s, `start` with the new Call-ID, `ok`), what
the SIPp parties saw (every message is pinned by the scenarios), and which worker owns what.

Also here: the Python API on the controller's actor handle driving a transfer
(examples/ray_transfer.py, subscribed with an actor handle) and a callable subscriber.
"""

from __future__ import annotations

import importlib.util
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import pytest

from switchboard.api import CommandError
from tests.cluster.ray_service import Service, import_ray
from tests.cluster.recorder import EventRecorder
from tests.support.bad_requests import PYTHON_API, check_refusals, python_kwargs
from tests.support.events import EventCollector, collecting
from tests.support.mi import MiClient
from tests.support.ports import HOST, free_port
from tests.support.sipp import (
    Sipp,
    StartSipp,
    assert_clean,
    killed_on_failure,
    received,
    sip_messages,
    wait_caller_first,
)

ray = import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
CALLOPS = HERE.parent / "interop" / "scenarios" / "callops"
EXAMPLE = HERE.parents[1] / "examples" / "ray_transfer.py"
TRANSFER_KEYS = ("leg", "transfer_callid", "destination", "state", "status")


def _prefix(tag: str) -> str:
    return f"sb-xw-{tag}-{secrets.token_hex(3)}-"


def _confirmed(service: Service, callid: str, timeout: float = 15.0) -> dict[str, Any]:
    """The dialog:list entry of `callid` once confirmed (state 4)."""
    deadline = time.monotonic() + timeout
    while True:
        for dialog in service.mi("dialog:list")["Dialogs"]:
            if dialog["callid"] == callid and dialog["state"] == 4:
                return dict(dialog)
        assert time.monotonic() < deadline, f"{callid} not confirmed after {timeout} s"
        time.sleep(0.05)


def _subscribe(service: Service, events: EventCollector, expire: int = 120) -> None:
    for event in ("E_CALL_TRANSFER", "E_DLG_STATE_CHANGED"):
        assert service.mi("evi:subscribe", event=event, socket=events.socket,
                          expire=expire) == "OK"


def _owner(events: EventCollector, callid: str) -> str:
    """The worker (dialog id prefix) that raised the dialog events of `callid`."""
    (first, *_) = events.params("E_DLG_STATE_CHANGED", lambda p: p["callid"] == callid)
    return str(first["id"]).partition(".")[0]


def _transfers(events: EventCollector, callid: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_CALL_TRANSFER", callid, *TRANSFER_KEYS)


def _load_example() -> ModuleType:
    """examples/ray_transfer.py as a module; Ray ships its classes by value (examples/ is not
    importable in the actors' processes)."""
    spec = importlib.util.spec_from_file_location("ray_transfer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


# -- blind ------------------------------------------------------------------------------------


def test_blind_transfer_whose_new_call_reaches_the_other_worker(
    sipp: StartSipp, service: Service
) -> None:
    """A calls B through worker 0; the controller's actor handle transfers A (the caller) to C
    blind (examples/ray_transfer.py, which subscribes an actor handle). A sends the new
    INVITE, with `;osid=<dialog id of worker 0>`, to worker 1: worker 1 relays it to C without
    the parameter and links it through the controller, so worker 0 raises for the old call
    exactly what one process raises, then ends the old call toward A and B."""
    example = _load_example()
    b = sipp("b", CALLOPS / "uas_callee.xml", local_port=free_port("udp")).wait_listening()
    c = sipp("c", "uas.xml", local_port=free_port("udp")).wait_listening()
    prefix = _prefix("blind")
    old = f"{prefix}1@{HOST}"
    dest = f"sip:c@{HOST}:{c.local_port}"
    with collecting() as events:
        _subscribe(service, events)
        a = sipp("a", SCENARIOS / "uac_blind_cross.xml", remote=f"{HOST}:{service.port(0)}",
                 local_port=free_port("udp"),
                 keys={"uas_port": b.local_port, "old_port": service.port(0),
                       "new_port": service.port(1)},
                 extra_args=("-cid_str", prefix + "%u@%s"))
        with killed_on_failure(a, b, c):
            dialog = _confirmed(service, old)
            assert dialog["ID"].startswith("0."), dialog
            seen = example.blind_transfer(old, "caller", dest, timeout=20.0)
        a_result, c_result, b_result = wait_caller_first(a, c, b)
        assert_clean(a_result, b_result, c_result)
        new = f"xfer///{old}"
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == new
                        and p["new_state"] == 5)
        expected = [
            ("caller", "", dest, "start", ""),
            ("caller", "", "", "notify", "100 Trying"),
            ("caller", new, dest, "start", ""),
            ("caller", new, dest, "ok", "200 OK"),
            ("caller", new, "", "notify", "200 OK"),
        ]
        assert _transfers(events, old) == expected, events.describe("E_CALL_TRANSFER")
        assert _transfers(events, new) == []
        # The old call lived on worker 0, the new one on worker 1; both are over.
        assert (_owner(events, old), _owner(events, new)) == ("0", "1")
        assert events.sequence("E_DLG_STATE_CHANGED", old, "new_state")[-1] == (5,)
        _subscribe(service, events, expire=0)
    # The actor-handle subscriber of the example saw the same stream.
    assert [tuple(p[k] for k in TRANSFER_KEYS) for p in seen] == expected
    # On the wire: C's INVITE lost the match parameter, A's carried worker 0's dialog id.
    [refer] = received(a_result, "REFER")
    assert refer.header("Refer-To") == f"<{dest};osid={dialog['ID']}>", refer.text
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest, c_invite.text
    assert service.mi("dialog:list") == {"Dialogs": []}
    # The outcome counters come from the owner's events (as in one process), summed over the
    # workers; `/metrics` serves them with the workers' merged call-setup histograms.
    assert service.mi("statistics:get", statistics=["callops:transfer_ok"])[
        "callops:transfer_ok"] >= 1
    assert service.sb.mi is not None
    with urllib.request.urlopen(f"http://{HOST}:{service.sb.mi.port}/metrics",
                                timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    assert any('runtime="ray"' in ln for ln in lines if ln.startswith("switchboard_build_info"))
    assert _sample(lines, 'switchboard_transfers_total{result="ok"}') >= 1
    assert _sample(lines, "switchboard_call_setup_seconds_count") >= 2  # the old and new call


def _sample(lines: list[str], name: str) -> float:
    (line,) = [ln for ln in lines if ln.startswith(name + " ")]
    return float(line.split()[-1])


# -- attended ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lands_on", [0, 1], ids=["invite-to-first-call-worker",
                                                   "invite-to-second-call-worker"])
def test_attended_transfer_whose_calls_live_on_different_workers(
    sipp: StartSipp, service: Service, lands_on: int
) -> None:
    """Call 1 A→B through worker 0, call 2 D→C through worker 1. callops:transfer hands A over
    to C (transfer_callid = call 2, transfer_leg = callee): worker 1 gives call 2's tags, worker
    0 REFERs A with Replaces, worker 1 expects the replacing INVITE. A sends it to worker
    `lands_on` (to the target by default: call 2's To URI, which is C); it is linked to both
    calls wherever it lands, and each owner raises what one process raises for its call. The
    proxy then ends call 1 (after A's final NOTIFY) and call 2 (its grace time later)."""
    c = sipp("c", "uas_wait_bye.xml", local_port=free_port("udp"), calls=2).wait_listening()
    b = sipp("b", CALLOPS / "uas_callee.xml", local_port=free_port("udp")).wait_listening()
    p1, p2 = _prefix("att1"), _prefix("att2")
    call1, call2 = f"{p1}1@{HOST}", f"{p2}1@{HOST}"
    runs: list[Sipp] = [c, b]
    with collecting() as events:
        _subscribe(service, events)
        try:
            d = sipp("d", "uac_wait_bye.xml", remote=f"{HOST}:{service.port(1)}",
                     local_port=free_port("udp"), keys={"uas_port": c.local_port},
                     extra_args=("-cid_str", p2 + "%u@%s"))
            runs.append(d)
            second = _confirmed(service, call2)
            assert second["ID"].startswith("1."), second
            callee_tag = second["CALLEES"][0]["callee_tag"]
            replaces = f"{call2};to-tag={callee_tag};from-tag={second['caller_tag']}"
            a = sipp("a", SCENARIOS / "uac_attended_cross.xml",
                     remote=f"{HOST}:{service.port(0)}", local_port=free_port("udp"),
                     keys={"uas_port": b.local_port, "old_port": service.port(0),
                           "new_port": service.port(lands_on), "replaces": replaces},
                     extra_args=("-cid_str", p1 + "%u@%s"))
            runs.append(a)
            first = _confirmed(service, call1)
            assert first["ID"].startswith("0."), first
            assert service.mi("callops:transfer", callid=call1, leg="caller",
                              transfer_callid=call2, transfer_leg="callee") == "Accepted"
        except BaseException:
            for run in runs:
                run.kill()
            raise
        a_result, b_result, d_result, c_result = wait_caller_first(a, b, d, c)
        assert_clean(a_result, b_result, d_result)
        assert_clean(c_result, calls=2)
        new = f"xfer///{call1}"
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == new
                        and p["new_state"] == 5)
        target = second["to_uri"]
        assert _transfers(events, call1) == [
            ("caller", "", target, "start", ""),
            ("caller", "", "", "notify", "100 Trying"),
            ("caller", new, target, "start", ""),
            ("caller", new, target, "ok", "200 OK"),
            ("caller", new, "", "notify", "200 OK"),
        ], events.describe("E_CALL_TRANSFER")
        assert _transfers(events, call2) == [
            ("callee", new, target, "start", ""),
            ("callee", new, target, "ok", "200 OK"),
        ], events.describe("E_CALL_TRANSFER")
        assert _transfers(events, new) == []
        assert (_owner(events, call1), _owner(events, call2), _owner(events, new)) == (
            "0", "1", str(lands_on))
        _subscribe(service, events, expire=0)
    # The REFER named call 2 with C's tag as to-tag (RFC 3891, C's view); the INVITE that
    # reached C carried it.
    [refer] = received(a_result, "REFER")
    refer_to = refer.header("Refer-To") or ""
    uri, _, header = refer_to.strip("<>").partition("?")
    assert uri == target and header.startswith("Replaces="), refer_to
    fields = unquote(header.removeprefix("Replaces=")).split(";")
    assert fields[0] == call2
    assert sorted(fields[1:]) == sorted(replaces.split(";")[1:]), refer_to
    invites = [m for m in sip_messages(c_result) if m.direction == "received"
               and m.method == "INVITE" and m.header("Call-ID") == new]
    assert invites and invites[0].header("Replaces") == replaces, invites
    assert service.mi("dialog:list") == {"Dialogs": []}


def test_attended_transfer_across_workers_refuses_as_one_process(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refusals come in the one-process order and with its errors, before anything is sent;
    the example says so and exits 1."""
    cases: list[tuple[dict[str, Any], int, str]] = [
        # The call acted on is looked up first, then the other one (as in one process).
        ({"transfer_callid": "nowhere@x", "transfer_leg": "callee"}, 404, "Dialog not found"),
        ({"transfer_callid": "nowhere@x"}, -32602, "Invalid params"),
        ({"transfer_callid": "nowhere@x", "transfer_fromtag": "f", "transfer_totag": "t",
          "destination": f"sip:c@{HOST}"}, 404, "Dialog not found"),
    ]
    controller = ray.get_actor("controller", namespace="switchboard")
    for params, code, message in cases:
        with pytest.raises(CommandError) as refused:
            ray.get(controller.call_transfer.remote(callid="nothing@here", leg="caller",
                                                    **params))
        assert (refused.value.code, refused.value.message) == (code, message), params
    assert _load_example().main(["nothing@here", "caller", f"sip:c@{HOST}"]) == 1
    assert "refused: 404 Dialog not found" in capsys.readouterr().err


def test_bad_call_operations_are_refused_by_the_table(service: Service) -> None:
    """The table of bad requests the local runtime refuses
    (`tests/integration/test_bad_operations.py`), refused the same way by the ray runtime:
    over the MI (the driver) and through the Python API (the controller's handle)."""
    controller = ray.get_actor("controller", namespace="switchboard")
    assert service.sb.mi is not None
    client = MiClient(service.sb.mi.url)

    def over_mi(method: str, params: dict[str, Any]) -> tuple[int, str, Any]:
        error = client.reply(method, params).get("error") or {}
        return error.get("code", 0), error.get("message", ""), error.get("data")

    def over_python(method: str, params: dict[str, Any]) -> tuple[int, str, Any]:
        call = getattr(controller, PYTHON_API[method])
        with pytest.raises(CommandError) as refused:
            ray.get(call.remote(**python_kwargs(params)))
        return refused.value.code, refused.value.message, refused.value.data

    try:
        check_refusals(over_mi)
    finally:
        client.close()
    check_refusals(over_python)


# -- Python subscribers --------------------------------------------------------------------------


def test_subscribers_given_as_actor_handle_and_callable(sipp: StartSipp, service: Service
                                                        ) -> None:
    """`subscribe` takes an actor handle (batches to its `on_events`) or a callable (run in
    the controller: here one that forwards to another actor) besides a socket; both get the
    events of a call on each worker, in order; expire 0 removes them."""
    controller = ray.get_actor("controller", namespace="switchboard")
    recorder_class: Any = ray.remote(num_cpus=0)(EventRecorder)
    by_handle, by_callable = recorder_class.remote(), recorder_class.remote()

    def forward(event: str, params: dict[str, Any]) -> Any:
        return by_callable.on_events.remote([(event, params)])

    for sink in (by_handle, forward):
        ray.get(controller.subscribe.remote("E_DLG_STATE_CHANGED", sink, 60))
    prefixes = [_prefix(f"py{w}") for w in range(2)]
    try:
        pairs = []
        for worker, prefix in enumerate(prefixes):
            uas = sipp(f"uas{worker}", "uas.xml", local_port=free_port("udp")).wait_listening()
            uac = sipp(f"uac{worker}", "uac.xml", remote=f"{HOST}:{service.port(worker)}",
                       local_port=free_port("udp"), keys={"uas_port": uas.local_port},
                       extra_args=("-cid_str", prefix + "%u@%s"))
            pairs.append((uac, uas))
        for uac, uas in pairs:
            assert_clean(uac.wait(), uas.wait())
        deadline = time.monotonic() + 10.0
        while True:
            got = [ray.get(r.events.remote()) for r in (by_handle, by_callable)]
            ended = [[p["callid"] for e, p in g if p["new_state"] == 5] for g in got]
            if all(sum(c.startswith(tuple(prefixes)) for c in e) == 2 for e in ended):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        for recorded in got:
            for worker, prefix in enumerate(prefixes):
                states = [(p["id"].partition(".")[0], p["new_state"]) for e, p in recorded
                          if e == "E_DLG_STATE_CHANGED" and p["callid"].startswith(prefix)]
                assert states and states[-2:] == [(f"{worker:x}", 4), (f"{worker:x}", 5)], states
    finally:
        for sink in (by_handle, forward):
            ray.get(controller.subscribe.remote("E_DLG_STATE_CHANGED", sink, 0))
    stats = ray.get(controller.statistics.remote())
    assert stats["evi:subscriptions"] == 0, stats
    with pytest.raises(CommandError) as refused:
        ray.get(controller.subscribe.remote("E_DLG_STATE_CHANGED", 42, 60))
    assert refused.value.code == -32602
