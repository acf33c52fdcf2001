"""`CaptureControl`, what the REST API asks of a node's capture: `CaptureSwitch` answering it
in process, and the `ray` runtime's view of its workers' captures added up."""

from __future__ import annotations

from switchboard.actors.worker import Worker
from switchboard.capture import CaptureControl, CaptureSwitch
from switchboard.cluster.ray_runtime.capture import merged_view
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from tests.unit.kit.endpoint import RecordingEndpoint
from tests.unit.test_capture import ALICE, US, invite


async def test_a_switch_answers_the_rest_api() -> None:
    proxy = Proxy(ProxyConfig(listeners=(US,)), lambda: "t")
    worker = Worker(proxy, CallOps(proxy), lambda name, params: None)
    worker.add_endpoint(RecordingEndpoint(US))
    control: CaptureControl = CaptureSwitch(worker)
    assert (await control.state())["enabled"] is False
    view = await control.enable(True)
    assert (view["enabled"], view["calls"], view["max_calls"]) == (True, 0, 1000)
    worker.receive(invite("c9@alice"), ALICE, US)
    found = await control.call_messages("c9@alice")
    assert found is not None and found[0]["direction"] == "in"
    assert found[0]["first_line"].startswith("INVITE sip:")
    assert await control.call_messages("nobody@x") is None
    assert (await control.enable(False))["calls"] == 0
    assert await control.call_messages("c9@alice") is None
    worker.close()


def test_the_workers_views_add_up() -> None:
    one = {"enabled": True, "until": 200.0, "calls": 3, "max_calls": 1000, "max_messages": 64}
    two = {**one, "until": 150.0, "calls": 4}
    assert merged_view([one, two]) == {"enabled": True, "until": 150.0, "calls": 7,
                                       "max_calls": 2000, "max_messages": 64}
    off = {**one, "enabled": False, "until": None, "calls": 0}
    assert merged_view([one, off])["enabled"] is False
    assert merged_view([one, off])["until"] is None
    assert merged_view([])["enabled"] is False
