"""Call operations cross the `ray` runtime's actors as msgpack, operation id included."""

from __future__ import annotations

import pytest

from switchboard.cluster.ray_runtime.codec import pack_operation, unpack_operation
from switchboard.sip.operations import Operation, end_call, hold, transfer

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("op", [
    transfer("c1", "caller", "sip:carol@example.com", operation_id="op1"),
    transfer("c1", "callee", None, "c2", "caller", operation_id="op2"),
    transfer("c1", "callee", "sip:d@x", "c2", None, "ft", "tt"),
    hold("c1", "callee", ["", "X-A: 1"], on=False, operation_id="op3"),
    hold("c1"),
    end_call("a.1", "Reason: x", operation_id="op4"),
])
def test_operations_round_trip(op: Operation) -> None:
    assert unpack_operation(pack_operation(op)) == op
