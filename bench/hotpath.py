"""The proxy core alone: CPU per call with no sockets, no event loop and no load generator.

    python -m bench.hotpath [--calls N] [--profile] [--allocs]

Plays the bench's SIPp call (bench/scenarios/uac.xml and uas.xml: INVITE, 180, 200 with SDP,
ACK, BYE, 200) through one `Proxy` built from the default configuration, on a fake clock that
moves 1 ms per call (so transactions linger and expire as at 1,000 calls/s), with the
garbage collector tuned as `switchboard serve` tunes it. Only the time
inside `Proxy.receive` and `Proxy.handle_timers` is counted: the user agents here are cheap
string templates, but their cost is not the proxy's. The call-rate bench measures the whole
process (syscalls and the event loop included); this one isolates the core so a change to
the parser or the proxy shows up in seconds, with `--profile` (cProfile, own time) or
`--allocs` (tracemalloc: blocks allocated per call) to see why.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
import tracemalloc
from collections.abc import Callable

from switchboard.actors.overload import YOUNG_EVERY
from switchboard.cluster.local import proxy_config
from switchboard.config import Config
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy
from switchboard.sip.wire import Address, Datagram

PROXY = Address("udp", "127.0.0.1", 5060)
UAC = Address("udp", "127.0.0.1", 5061)
UAS = Address("udp", "127.0.0.1", 5062)
UAC_SDP = (
    "v=0\r\no=bench 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
UAS_SDP = (
    "v=0\r\no=uas 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
UAS_CONTACT = "<sip:uas@127.0.0.1:5062;transport=UDP>"


def _invite(n: int) -> bytes:
    return (
        "INVITE sip:service@127.0.0.1:5062 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-0\r\n"
        f'From: "bench" <sip:bench@127.0.0.1:5061>;tag=1b{n}\r\n'
        "To: <sip:service@127.0.0.1:5062>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:bench@127.0.0.1:5061>\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: switchboard bench\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(UAC_SDP)}\r\n\r\n{UAC_SDP}"
    ).encode()


def _headers(data: bytes) -> dict[str, list[str]]:
    """The header lines of a message the proxy sent, by lower-case name (the UAs' view)."""
    out: dict[str, list[str]] = {}
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def _response(request: bytes, status: str, *, tag: str | None, body: str = "") -> bytes:
    """What the SIPp UAS sends: the request's Via, From, To, Call-ID, CSeq and
    Record-Route copied ([last_*])."""
    h = _headers(request)
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in h["via"]]
    lines.append(f"From: {h['from'][0]}")
    lines.append(f"To: {h['to'][0]}" + (f";tag={tag}" if tag else ""))
    lines.append(f"Call-ID: {h['call-id'][0]}")
    lines.append(f"CSeq: {h['cseq'][0]}")
    lines += [f"Record-Route: {r}" for r in h.get("record-route", ())]
    if tag:
        lines.append(f"Contact: {UAS_CONTACT}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _in_dialog(method: str, n: int, cseq: int, ok: bytes) -> bytes:
    """The UAC's ACK or BYE: to the 200's Contact, through its Record-Route set."""
    h = _headers(ok)
    to = h["to"][0]
    routes = "".join(f"Route: {r}\r\n" for r in h.get("record-route", ()))
    return (
        f"{method} sip:uas@127.0.0.1:5062;transport=UDP SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-{cseq}\r\n"
        f'From: "bench" <sip:bench@127.0.0.1:5061>;tag=1b{n}\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{routes}"
        "Contact: <sip:bench@127.0.0.1:5061>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Bench:
    """One proxy and the two user agents; `call(n)` plays call n and returns the seconds
    spent inside the proxy."""

    def __init__(self) -> None:
        config = Config()
        self.proxy = Proxy(proxy_config(config, (PROXY,)), lambda: "r4nd0m")
        CallOps(self.proxy)  # as `serve` runs it: call operations on top
        self.now = 1000.0
        self.clock = time.perf_counter
        # The collector as the runtime runs it (cluster/local.py, actors/overload.py): not
        # automatic, the youngest generation collected every YOUNG_EVERY of the fake clock.
        gc.collect()
        gc.freeze()
        gc.disable()
        self.next_collect = self.now + YOUNG_EVERY

    def _feed(self, data: bytes, source: Address) -> tuple[list[Datagram], float]:
        proxy = self.proxy
        t0 = self.clock()
        proxy.receive(data, source, PROXY, self.now)
        spent = self.clock() - t0
        out = list(proxy.outbox)
        proxy.outbox.clear()
        proxy.events.clear()
        return out, spent

    def _to(self, out: list[Datagram], dest: Address) -> bytes:
        for dgram in out:
            if dgram.dest == dest:
                return dgram.data
        raise AssertionError(f"the proxy sent nothing to {dest}: {out}")

    def call(self, n: int) -> float:
        spent = 0.0
        out, s = self._feed(_invite(n), UAC)
        spent += s
        invite = self._to(out, UAS)
        tag = f"1s{n}"
        _, s = self._feed(_response(invite, "180 Ringing", tag=tag), UAS)
        spent += s
        out, s = self._feed(_response(invite, "200 OK", tag=tag, body=UAS_SDP), UAS)
        spent += s
        ok = self._to(out, UAC)
        out, s = self._feed(_in_dialog("ACK", n, 1, ok), UAC)
        spent += s
        self._to(out, UAS)
        out, s = self._feed(_in_dialog("BYE", n, 2, ok), UAC)
        spent += s
        bye = self._to(out, UAS)
        out, s = self._feed(_response(bye, "200 OK", tag=None), UAS)
        spent += s
        self._to(out, UAC)
        self.now += 0.001
        t0 = self.clock()
        self.proxy.handle_timers(self.now)
        self.proxy.outbox.clear()
        if self.now >= self.next_collect:
            self.next_collect += YOUNG_EVERY
            gc.collect(0)
        return spent + self.clock() - t0


def run(calls: int, *, warmup: int = 2000) -> float:
    """Microseconds of proxy time per call, after `warmup` calls."""
    bench = Bench()
    for n in range(warmup):
        bench.call(n)
    spent = 0.0
    for n in range(warmup, warmup + calls):
        spent += bench.call(n)
    return spent / calls * 1e6


def _profile(calls: int) -> None:
    bench = Bench()
    for n in range(2000):
        bench.call(n)
    profiler = cProfile.Profile()
    bench.clock = _profiling_clock(profiler)
    for n in range(2000, 2000 + calls):
        bench.call(n)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def _profiling_clock(profiler: cProfile.Profile) -> Callable[[], float]:
    """A clock that switches the profiler on inside the proxy and off outside it."""
    inside = [False]

    def clock() -> float:
        if inside[0]:
            profiler.disable()
        else:
            profiler.enable()
        inside[0] = not inside[0]
        return 0.0

    return clock


def _allocs(calls: int) -> None:
    bench = Bench()
    for n in range(2000):
        bench.call(n)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for n in range(2000, 2000 + calls):
        bench.call(n)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    print(f"net blocks per call (top lines, {calls} calls):")
    for stat in sorted(diff, key=lambda s: -abs(s.count_diff))[:25]:
        print(f"  {stat.count_diff / calls:8.2f}  {stat.traceback}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--profile", action="store_true", help="cProfile the proxy, own time")
    p.add_argument("--allocs", action="store_true", help="tracemalloc: blocks kept per call")
    args = p.parse_args()
    if args.profile:
        _profile(args.calls)
    elif args.allocs:
        _allocs(args.calls)
    else:
        best = min(run(args.calls) for _ in range(3))
        print(f"proxy core: {best:.1f} us per call (best of 3 x {args.calls} calls, "
              f"6 messages in, 7 out)")


if __name__ == "__main__":
    main()
