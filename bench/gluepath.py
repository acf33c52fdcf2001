"""The glue around the core: CPU per call of the listener and the worker, without the kernel.

    python -m bench.gluepath [--calls N]

Plays `bench.hotpath`'s call (INVITE, 180, 200 with SDP, ACK, BYE, 200) through what `serve`
runs around the core: `UdpEndpoint.datagram_received` → `Worker.receive` → `Proxy.receive`
→ `Worker.flush` (events counted by `CallMetrics` and offered to an `EventBus` with no
subscriber, the loop timer re-armed) → `UdpEndpoint.send` into a transport that drops what
it is given. So no syscall, no SIPp: the number is the core plus the Python around it, in
µs per call (best of 3), and `python -m bench.hotpath` subtracted from it is the glue's own
share. The transaction timers run on the loop's real clock each call (`Worker._on_timer`),
as they would in `serve`. The time counted is the process's CPU time (`time.process_time`),
not the wall clock, so that other work on a shared machine does not count; reading it is a
syscall, about the same on either side of a comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from switchboard.actors.eventbus import EventBus
from switchboard.actors.worker import Worker
from switchboard.metrics import CallMetrics
from switchboard.sip.callops import CallOps
from switchboard.sip.wire import Address
from switchboard.transport.udp import UdpEndpoint

from .hotpath import PROXY, UAC, UAS, UAS_SDP, Bench, _in_dialog, _invite, _response


class _Dropping:
    """A datagram transport that keeps the last datagram per destination and sends none."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], bytes] = {}

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent[addr] = data

    def close(self) -> None:
        pass


class Glue:
    def __init__(self) -> None:
        core = Bench()  # the proxy and call operations hotpath builds, the collector as serve
        self.proxy = core.proxy
        bus = EventBus()
        metrics = CallMetrics(lambda _id: None, asyncio.get_running_loop().time)
        callops = self.proxy.callops
        assert isinstance(callops, CallOps)
        self.worker = Worker(self.proxy, callops, metrics.wrap(bus.publish))
        self.endpoint = UdpEndpoint(PROXY, self.worker.receive)
        self.transport = _Dropping()
        self.endpoint.connection_made(self.transport)  # type: ignore[arg-type]
        self.worker.add_endpoint(self.endpoint)

    def _feed(self, data: bytes, source: Address) -> float:
        t0 = time.process_time()
        self.endpoint.datagram_received(data, (source.host, source.port))
        return time.process_time() - t0

    def _last_to(self, dest: Address) -> bytes:
        return self.transport.sent.pop((dest.host, dest.port))

    def call(self, n: int) -> float:
        spent = self._feed(_invite(n), UAC)
        invite = self._last_to(UAS)
        tag = f"1s{n}"
        spent += self._feed(_response(invite, "180 Ringing", tag=tag), UAS)
        spent += self._feed(_response(invite, "200 OK", tag=tag, body=UAS_SDP), UAS)
        ok = self._last_to(UAC)
        spent += self._feed(_in_dialog("ACK", n, 1, ok), UAC)
        spent += self._feed(_in_dialog("BYE", n, 2, ok), UAC)
        bye = self._last_to(UAS)
        spent += self._feed(_response(bye, "200 OK", tag=None), UAS)
        t0 = time.process_time()
        self.worker._on_timer()
        return spent + time.process_time() - t0


def _run(calls: int, warmup: int = 2000) -> float:
    async def main() -> float:
        glue = Glue()
        for n in range(warmup):
            glue.call(n)
        spent = 0.0
        for n in range(warmup, warmup + calls):
            spent += glue.call(n)
            if n % 50 == 0:
                gc.collect(0)  # the youngest generation, about as often as serve does
        return spent / calls * 1e6

    return uvloop.run(main())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gluepath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    args = p.parse_args()
    best = min(_run(args.calls) for _ in range(3))
    print(f"core + glue: {best:.1f} us per call (best of 3 x {args.calls} calls, "
          "6 datagrams in, 7 out, no syscalls)")


if __name__ == "__main__":
    main()
