"""The call path makes no reference cycles: the worker runs the garbage collector rarely
(see `cluster/local.py`), which is only safe while finished calls are freed by reference
counting alone. A full call, a failed call and a cancelled call, then every timer run."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from switchboard.sip import parse_message
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    OUR_RR,
    Net,
    ack_for_2xx,
    ack_for_non_2xx,
    invite,
    reply,
    sip_request,
)


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def run_calls(net: Net, n: int) -> None:
    for i in range(n):
        cid = f"call-{i}"
        out = net.send(invite(branch=f"z9hG4bKi{i}", call_id=cid), ALICE)
        fwd = parse_message(out[-1].data)
        net.send(reply(fwd, 180), BOB)
        if i % 3 == 0:  # answered, then hung up
            net.send(reply(fwd, 200), BOB)
            net.send(ack_for_2xx(branch=f"z9hG4bKa{i}", call_id=cid), ALICE)
            out = net.send(sip_request("BYE", "sip:bob@127.0.0.1:5062", branch=f"z9hG4bKb{i}",
                                       call_id=cid, to_tag="bob-tag", cseq=2,
                                       routes=(OUR_RR,)), ALICE)
            net.send(reply(parse_message(out[-1].data), 200), BOB)
        elif i % 3 == 1:  # busy
            busy = reply(fwd, 486)
            net.send(busy, BOB)
            net.send(ack_for_non_2xx(invite(branch=f"z9hG4bKi{i}", call_id=cid),
                                     parse_message(busy)), ALICE)
        else:  # cancelled while ringing
            cancel = sip_request("CANCEL", "sip:bob@127.0.0.1:5062", branch=f"z9hG4bKi{i}",
                                 call_id=cid)
            out = net.send(cancel, ALICE)
            down = [parse_message(d.data) for d in out if d.dest == BOB]
            net.send(reply(down[0], 200), BOB)
            terminated = reply(fwd, 487)
            net.send(terminated, BOB)
            net.send(ack_for_non_2xx(invite(branch=f"z9hG4bKi{i}", call_id=cid),
                                     parse_message(terminated)), ALICE)
        net.events()
    net.run_all_timers()


def test_finished_calls_leave_no_cyclic_garbage(no_gc: None) -> None:
    net = Net()
    run_calls(net, 30)  # warm up: imports, caches, interned strings
    gc.collect()
    run_calls(net, 60)
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    ours = [type(o).__qualname__ for o in gc.garbage
            if type(o).__module__.startswith("switchboard")]
    assert ours == []
    net.assert_idle()
