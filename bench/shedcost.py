"""The cost of refusing a new call under overload, against the cost of a call: the core alone.

    python -m bench.shedcost [--calls N]

Plays the hot-path bench's call (bench/hotpath.py) through one `Proxy`, then the same
INVITEs with every new call refused (`Proxy.shed_fraction = 1`): the INVITE, the 503 + Retry-After
and the caller's ACK of it, the transaction's timers included, on the same fake clock. Only
the time inside `Proxy.receive` and `Proxy.handle_timers` is counted. Shedding holds the line
only when a refusal costs a small fraction of a call: at twice the rate the process can carry,
half the INVITEs are refused, and what they cost comes out of the calls it takes.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from switchboard.actors.overload import YOUNG_EVERY

from .hotpath import UAC, Bench, _headers, _invite


def _ack_of(invite: bytes, answer: bytes) -> bytes:
    """The caller's ACK of a non-2xx final answer: the INVITE's Via branch, Request-URI,
    From, Call-ID and CSeq number, the answer's To (RFC 3261 §17.1.1.3)."""
    h = _headers(invite)
    to = _headers(answer)["to"][0]
    return (
        "ACK sip:service@127.0.0.1:5062 SIP/2.0\r\n"
        f"Via: {h['via'][0]}\r\n"
        f"From: {h['from'][0]}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {h['call-id'][0]}\r\n"
        f"CSeq: {h['cseq'][0].split()[0]} ACK\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def refuse(bench: Bench, n: int) -> float:
    """One refused INVITE and its ACK; the seconds spent inside the proxy."""
    invite = _invite(n)
    out, spent = bench._feed(invite, UAC)
    answer = next(d.data for d in out if d.data.startswith(b"SIP/2.0 503"))
    out, s = bench._feed(_ack_of(invite, answer), UAC)
    spent += s
    if out:
        raise AssertionError(f"the ACK of a 503 went on: {out}")
    return spent + _tick(bench)


def _tick(bench: Bench) -> float:
    """1 ms on, as `Bench.call` moves its clock: the due timers and the young collection."""
    bench.now += 0.001
    t0 = bench.clock()
    bench.proxy.handle_timers(bench.now)
    bench.proxy.outbox.clear()
    if bench.now >= bench.next_collect:
        bench.next_collect += YOUNG_EVERY
        gc.collect(0)
    return bench.clock() - t0


def run(calls: int, warmup: int = 2000, rounds: int = 5) -> tuple[float, float]:
    """Microseconds of proxy CPU time per call and per refused INVITE: the medians of
    `rounds` interleaved batches (the thread's CPU clock, so other work on a shared machine
    counts less)."""
    bench = Bench()
    bench.clock = time.thread_time
    for n in range(warmup):
        bench.call(n)
    bench.proxy.shed_fraction = 1.0
    base = 10 * (warmup + calls * rounds)
    for n in range(base, base + warmup):
        refuse(bench, n)
    per_call: list[float] = []
    per_refusal: list[float] = []
    batch = max(1, calls // rounds)
    for r in range(rounds):
        bench.proxy.shed_fraction = 0.0
        first = warmup + r * batch
        per_call.append(sum(bench.call(n) for n in range(first, first + batch)) / batch)
        bench.proxy.shed_fraction = 1.0
        first += base + warmup
        per_refusal.append(sum(refuse(bench, n) for n in range(first, first + batch)) / batch)
    return statistics.median(per_call) * 1e6, statistics.median(per_refusal) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    call, shed = run(args.calls)
    print(f"call {call:.1f} us, refused INVITE {shed:.1f} us ({shed / call:.0%} of a call)")


if __name__ == "__main__":
    main()
