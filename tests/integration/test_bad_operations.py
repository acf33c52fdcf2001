"""The local runtime refuses the table of bad call-operation requests
(`tests/support/bad_requests.py`) as the ray runtime does (`tests/cluster/test_ray_callops.py`
runs the same table), over the MI of a real `switchboard serve`."""

from __future__ import annotations

from typing import Any

from tests.support.bad_requests import check_refusals
from tests.support.server import SwitchboardServer


def test_bad_call_operations_are_refused_by_the_table(switchboard: SwitchboardServer) -> None:
    def answer(method: str, params: dict[str, Any]) -> tuple[int, str, Any]:
        error = switchboard.mi(method, params).get("error") or {}
        return error.get("code", 0), error.get("message", ""), error.get("data")

    check_refusals(answer)
    # The process keeps serving.
    assert switchboard.mi_result("dialog:list") == {"Dialogs": []}
