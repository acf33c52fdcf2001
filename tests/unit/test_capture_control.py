"""The `ray` runtime's view of its workers' captures (`CaptureControl.state`), added up; a
`CaptureSwitch` answering the REST API in process is tested in test_capture.py."""

from __future__ import annotations

from switchboard.cluster.ray_runtime.capture import merged_view


def test_the_workers_views_add_up() -> None:
    one = {"enabled": True, "until": 200.0, "calls": 3, "max_calls": 1000, "max_messages": 64}
    two = {**one, "until": 150.0, "calls": 4}
    assert merged_view([one, two]) == {"enabled": True, "until": 150.0, "calls": 7,
                                       "max_calls": 2000, "max_messages": 64}
    off = {**one, "enabled": False, "until": None, "calls": 0}
    assert merged_view([one, off])["enabled"] is False
    assert merged_view([one, off])["until"] is None
    assert merged_view([])["enabled"] is False
