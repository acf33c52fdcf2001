"""The glue around the core: CPU per call of the listener and the worker, without the kernel.

    python -m bench.gluepath [--calls N]

Plays `bench.hotpath`'s call (INVITE, 180, 200 with SDP, ACK, BYE, 200) through what `serve`
runs around the core, as the local runtime wires it (`LocalSwitchboard.start`: the event bus
with no subscriber, the call metrics, the tags, the listener's receiver):
`UdpEndpoint.datagram_received` → `Worker.receive` → `Proxy.receive` → `Worker.flush` (the
events, the loop timer re-armed) → `UdpEndpoint.send` into a transport that drops what it is
given. So no syscall, no SIPp: the number is the core plus the Python around it, in µs per
call (best of 3), and `python -m bench.hotpath` subtracted from it is the glue's own share.
The transaction timers run on the loop's real clock each call (`Worker._on_timer`), as they
would in `serve`. The time counted is the process's CPU time (`time.process_time`), not the
wall clock, so that other work on a shared machine does not count; reading it is a syscall,
about the same on either side of a comparison. It uses only what every tree since the local
runtime's `start` has, so the same file measures two trees alike (A/B). On a machine too busy
for times, `--untimed N` under `valgrind --tool=cachegrind --cache-sim=no` counts
instructions instead: the count for 1,300 calls less the count for 300 is 1,000 calls' own.
"""

from __future__ import annotations

import argparse
import gc
import time

import uvloop

from switchboard.cluster.local import LocalSwitchboard
from switchboard.config import Config, ListenConfig, ListenSocket, MIConfig
from switchboard.sip.wire import Address
from switchboard.transport.udp import UdpEndpoint

from .hotpath import UAC, UAS, UAS_SDP, _in_dialog, _invite, _response


class _Dropping:
    """A datagram transport that keeps the last datagram per destination and sends none."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], bytes] = {}

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent[addr] = data

    def close(self) -> None:
        pass


class Glue:
    """A started local runtime on a loopback port whose listener sends into `_Dropping`."""

    def __init__(self, sb: LocalSwitchboard) -> None:
        self.sb = sb
        assert sb.worker is not None
        (endpoint,) = sb.worker.endpoints.values()
        assert isinstance(endpoint, UdpEndpoint)
        self.worker = sb.worker
        self.endpoint = endpoint
        self.socket_transport = endpoint._transport  # the bound socket, closed at the end
        self.transport = _Dropping()
        endpoint.connection_made(self.transport)  # type: ignore[arg-type]

    @classmethod
    async def start(cls) -> Glue:
        config = Config(listen=ListenConfig(sockets=(ListenSocket("udp", "127.0.0.1", 0),)),
                        mi=MIConfig(http=None))
        sb = LocalSwitchboard(config)
        await sb.start()
        return cls(sb)

    async def stop(self) -> None:
        await self.sb.stop()
        if self.socket_transport is not None:
            self.socket_transport.close()

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
        glue = await Glue.start()
        try:
            for n in range(warmup):
                glue.call(n)
            spent = 0.0
            for n in range(warmup, warmup + calls):
                spent += glue.call(n)
                if n % 50 == 0:
                    gc.collect(0)  # the youngest generation, about as often as serve does
            return spent / calls * 1e6
        finally:
            await glue.stop()

    return uvloop.run(main())


def _untimed(calls: int) -> None:
    async def main() -> None:
        glue = await Glue.start()
        try:
            for n in range(calls):
                glue.call(n)
                if n % 50 == 0:
                    gc.collect(0)
        finally:
            await glue.stop()

    uvloop.run(main())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gluepath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--untimed", type=int, metavar="N",
                   help="only play N calls, once, timing nothing: for an instruction count "
                   "(valgrind --tool=cachegrind) of two values of N, whose difference is "
                   "the calls' own")
    args = p.parse_args()
    if args.untimed is not None:
        _untimed(args.untimed)
        return
    best = min(_run(args.calls) for _ in range(3))
    print(f"core + glue: {best:.1f} us per call (best of 3 x {args.calls} calls, "
          "6 datagrams in, 7 out, no syscalls)")


if __name__ == "__main__":
    main()
