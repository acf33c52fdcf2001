"""The Python heap one held dialog costs switchboard's proxy core, counted by tracemalloc.

`python -m bench.heap --dialogs 10000` drives `switchboard.sip.proxy.Proxy` in this process,
without sockets or an event loop (the core is sans-I/O: datagrams in, datagrams out, a clock
passed in): N calls as the bench's SIPp scenarios make them (INVITE with SDP, 180, 200 with
SDP, ACK, all through the proxy, record-routed), then the clock moved on past every
transaction timer (40 s), so only the N confirmed dialogs are left; then every caller hangs
up (BYE, 200) and the clock moves past every timer again. It prints, as JSON, the heap
tracemalloc sees grow per call right after the calls (dialogs + their transactions), once the
transactions ended (dialogs alone, their two SDP bodies included), the objects per dialog by
type, and the heap left per dialog once they all hung up (a warm-up of calls set up and hung
up the same way comes first and is not counted).

This is the memory the core itself keeps per dialog, exactly, with no allocator in the way.
What the process holds (PSS/RSS, the dialogs-held part of the suite) is more: CPython's
allocator keeps the memory of the fill's ended transactions for reuse, and arenas that hold
one live object are not given back to the system.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

CALLER = ("127.0.0.1", 5061)
CALLEE = ("127.0.0.1", 5062)
PROXY = ("127.0.0.1", 5060)

SDP_A = (
    "v=0\r\no=bench 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
SDP_B = (
    "v=0\r\no=uas 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def _headers(data: bytes, name: str) -> list[str]:
    """Every `name:` header line of a message (whole lines, name included)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    prefix = name.lower() + ":"
    return [line for line in head.split("\r\n")[1:] if line.lower().startswith(prefix)]


def _value(line: str) -> str:
    return line.split(":", 1)[1].strip()


class Driver:
    def __init__(self) -> None:
        from switchboard.sip.callops import CallOps
        from switchboard.sip.proxy import Proxy, ProxyConfig
        from switchboard.sip.wire import Address

        self.Address = Address
        self.local = Address("udp", *PROXY)
        self.src_a = Address("udp", *CALLER)
        self.src_b = Address("udp", *CALLEE)
        counter = iter(range(1, 1 << 62))
        self.proxy = Proxy(ProxyConfig(listeners=(self.local,)),
                           lambda: f"{next(counter):x}", first_seq=1 << 8)
        CallOps(self.proxy)  # as `serve` runs it: call operations on top
        self.now = 1000.0
        self.route = ""  # the Route of the caller's in-dialog requests (the same every call)

    def _take(self) -> list[Any]:
        out = list(self.proxy.outbox)
        self.proxy.outbox.clear()
        self.proxy.events.clear()
        return out

    def _feed(self, data: str, source: Any) -> list[Any]:
        self.proxy.receive(data.encode(), source, self.local, self.now)
        self.proxy.handle_timers(self.now)
        return self._take()

    def call(self, n: int) -> None:
        """One call up to confirmed: INVITE, 180, 200, ACK through the proxy."""
        call_id = f"{n}-bench@127.0.0.1"
        a = f"{CALLER[0]}:{CALLER[1]}"
        b = f"{CALLEE[0]}:{CALLEE[1]}"
        invite = (
            f"INVITE sip:service@{b} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {a};branch=z9hG4bK-1-{n}-0\r\n"
            f"From: \"bench\" <sip:bench@{a}>;tag=1b{n}\r\n"
            f"To: <sip:service@{b}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:bench@{a}>\r\nMax-Forwards: 70\r\nSubject: switchboard bench\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP_A)}\r\n\r\n{SDP_A}"
        )
        relayed = [d for d in self._feed(invite, self.src_a) if d.dest.port == CALLEE[1]]
        if not relayed:
            raise RuntimeError("the proxy did not relay the INVITE")
        fwd = relayed[0].data
        vias = "\r\n".join(_headers(fwd, "via"))
        rrs = "\r\n".join(_headers(fwd, "record-route"))
        common = (f"{vias}\r\nFrom: \"bench\" <sip:bench@{a}>;tag=1b{n}\r\n"
                  f"To: <sip:service@{b}>;tag=1s{n}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                  f"{rrs}\r\nContact: <sip:uas@{b};transport=UDP>\r\n")
        self._feed(f"SIP/2.0 180 Ringing\r\n{common}Content-Length: 0\r\n\r\n", self.src_b)
        ok = self._feed(f"SIP/2.0 200 OK\r\n{common}Content-Type: application/sdp\r\n"
                        f"Content-Length: {len(SDP_B)}\r\n\r\n{SDP_B}", self.src_b)
        to_a = [d for d in ok if d.dest.port == CALLER[1]]
        if not to_a:
            raise RuntimeError("the proxy did not relay the 200")
        routes = [_value(h) for h in _headers(to_a[0].data, "record-route")]
        route = self.route = "".join(f"Route: {r}\r\n" for r in routes)
        ack = (f"ACK sip:uas@{b};transport=UDP SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {a};branch=z9hG4bK-1-{n}-5\r\n"
               f"From: \"bench\" <sip:bench@{a}>;tag=1b{n}\r\n"
               f"To: <sip:service@{b}>;tag=1s{n}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n"
               f"{route}Contact: <sip:bench@{a}>\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        self._feed(ack, self.src_a)

    def hang_up(self, n: int) -> None:
        """The caller of call `n` hangs up: BYE through the proxy, 200 back."""
        a = f"{CALLER[0]}:{CALLER[1]}"
        b = f"{CALLEE[0]}:{CALLEE[1]}"
        bye = (f"BYE sip:uas@{b};transport=UDP SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {a};branch=z9hG4bK-1-{n}-7\r\n"
               f"From: \"bench\" <sip:bench@{a}>;tag=1b{n}\r\n"
               f"To: <sip:service@{b}>;tag=1s{n}\r\nCall-ID: {n}-bench@127.0.0.1\r\n"
               f"CSeq: 2 BYE\r\n{self.route}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        relayed = [d for d in self._feed(bye, self.src_a) if d.dest.port == CALLEE[1]]
        if not relayed:
            raise RuntimeError("the proxy did not relay the BYE")
        vias = "\r\n".join(_headers(relayed[0].data, "via"))
        self._feed(f"SIP/2.0 200 OK\r\n{vias}\r\nFrom: \"bench\" <sip:bench@{a}>;tag=1b{n}\r\n"
                   f"To: <sip:service@{b}>;tag=1s{n}\r\nCall-ID: {n}-bench@127.0.0.1\r\n"
                   "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n", self.src_b)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.proxy.handle_timers(self.now)
        self._take()

    def counts(self) -> tuple[int, int]:
        stats = self.proxy.statistics()
        return stats["dialog:active_dialogs"], stats["tm:inuse_transactions"]


def _objects() -> Counter[str]:
    """Objects the garbage collector tracks, by type (str, bytes and int are not tracked)."""
    return Counter(type(o).__name__ for o in gc.get_objects())


# Past every timer a call leaves behind: the BYE's transactions (64*T1) and the deleted
# dialog's linger (32 s), with room to spare.
ALL_TIMERS_S = 80.0


def measure(dialogs: int, warmup: int = 200, hang_up: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    gc.disable()
    tracemalloc.start()
    driver = Driver()
    for n in range(warmup):  # code paths, caches and tables warmed up; not counted
        driver.call(n)
        driver.now += 0.001
    for n in range(warmup):
        driver.hang_up(n)
        driver.now += 0.001
    driver.advance(ALL_TIMERS_S)
    gc.collect()
    base, _ = tracemalloc.get_traced_memory()
    base_objects = _objects()
    base_dialogs, _ = driver.counts()
    for n in range(warmup, warmup + dialogs):
        driver.call(n)
        driver.now += 0.001  # 1,000 calls/s
    gc.collect()
    filled, _ = tracemalloc.get_traced_memory()
    held_f, txns_f = driver.counts()
    driver.advance(40.0)
    gc.collect()
    settled, _ = tracemalloc.get_traced_memory()
    held, txns = driver.counts()
    added = held - base_dialogs
    objects = {name: round((count - base_objects[name]) / max(1, added), 2)
               for name, count in _objects().items()
               if count - base_objects[name] >= max(1, added) // 2}
    left: dict[str, Any] = {}
    if hang_up:
        for n in range(warmup, warmup + dialogs):
            driver.hang_up(n)
            driver.now += 0.001
        driver.advance(ALL_TIMERS_S)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
        _, txns_after = driver.counts()
        left = {"dialogs_after_hang_up": len(driver.proxy.dialogs),
                "transactions_after_hang_up": txns_after,
                "heap_bytes_left_per_dialog": round((after - base) / max(1, added), 1)}
    tracemalloc.stop()
    return {
        "dialogs": added,
        "transactions_after_fill": txns_f,
        "transactions_settled": txns,
        "heap_bytes_per_call_with_transactions": round((filled - base) / max(1, held_f
                                                                             - base_dialogs), 1),
        "heap_bytes_per_dialog": round((settled - base) / max(1, added), 1),
        "sdp_bytes_per_dialog": len(SDP_A) + len(SDP_B),
        "objects_per_dialog": objects,
        **left,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heap", description=__doc__.split("\n")[0])
    p.add_argument("--dialogs", type=int, default=10000)
    p.add_argument("--no-hang-up", action="store_true",
                   help="skip the hang-up (and the heap left behind after it)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.dialogs, hang_up=not args.no_hang_up)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
