"""Workers behind one address: what routing each message to its owner costs (docs/ray.md,
"One address for every worker").

`python -m bench.shared_port [--rate 300] [--duration 10] [--messages 20000]`

1. Calls: `serve --runtime ray` on a private Ray (`bench/_ray_serve.py`) with 1 worker, then
   with 2 workers behind one address (`[runtime] shared_port`), one SIPp UAC and one UAS (one
   socket each, so the kernel gives a whole party to one worker) at the same rate for the
   same time (`callrate.run_step`); then 2 workers on a port each, one UAC per port (no
   message changes worker). Per call: the CPU of every process of the session (Ray's GCS,
   raylet and controller included) and of the worker actors alone; then the ratio of 2
   workers behind one address to 1 worker (where the design allows 1.15), and to 2 workers
   on a port each (the routing alone).
2. The hand-off in isolation, in this process (no SIP core): microseconds per message to
   classify it (`Ownership.owner`: a new INVITE by its Call-ID, a response by its Via, an
   in-dialog request by its Route), and to hand it from one worker's channel to another's
   (envelope, Unix stream socket, delivery), a burst at a time, with the process's CPU.

Prints what it measured and writes it as JSON to bench/results/ (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from switchboard.cluster.owner import Ownership
from switchboard.sip.wire import Address
from switchboard.transport.handoff import HandoffChannel
from tests.support.sipp import sipp_binary

from . import callrate
from .systems import SwitchboardRay

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

INVITE = (
    "INVITE sip:service@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4711-{n}-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag=4711SIPpTag00{n}\r\n"
    "To: <sip:service@127.0.0.1:5070>\r\n"
    "Call-ID: {n}-4711@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: sip:sipp@127.0.0.1:5061\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 129\r\n\r\n"
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
RESPONSE = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1a2b3c4d.9f8e7d6c.w1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4711-{n}-0\r\n"
    "Record-Route: <sip:127.0.0.1:5060;lr;wk=1>\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag=4711SIPpTag00{n}\r\n"
    "To: <sip:service@127.0.0.1:5070>;tag=4712SIPpTag01{n}\r\n"
    "Call-ID: {n}-4711@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:127.0.0.1:5070;transport=UDP>\r\n"
    "Content-Length: 0\r\n\r\n"
)
BYE = (
    "BYE sip:127.0.0.1:5070;transport=UDP SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4711-{n}-2\r\n"
    "Route: <sip:127.0.0.1:5060;lr;wk=1>\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag=4711SIPpTag00{n}\r\n"
    "To: <sip:service@127.0.0.1:5070>;tag=4712SIPpTag01{n}\r\n"
    "Call-ID: {n}-4711@127.0.0.1\r\n"
    "CSeq: 2 BYE\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _messages(template: str, count: int) -> list[bytes]:
    return [template.format(n=n).encode() for n in range(count)]


def classification_us(count: int) -> dict[str, float]:
    """µs per message for `Ownership.owner`, per kind of message (2 workers)."""
    ownership = Ownership((0, 1))
    out = {}
    for name, template in (("invite_by_call_id", INVITE), ("response_by_via", RESPONSE),
                           ("in_dialog_by_route", BYE)):
        messages = _messages(template, count)
        owner = ownership.owner
        t0 = time.perf_counter()
        for data in messages:
            owner(data)
        out[name] = round((time.perf_counter() - t0) * 1e6 / count, 3)
    return out


async def _handoff(count: int, burst: int) -> dict[str, float]:
    messages = _messages(INVITE, count)
    here = Address("udp", HOST, 5060)
    loop = asyncio.get_running_loop()
    warm: asyncio.Future[None] = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()
    received = -1  # the first message only opens the connection

    def deliver(kind: int, sender: int, data: bytes, source: Address, local: Address) -> None:
        nonlocal received
        received += 1
        if received == 0:
            warm.set_result(None)
        elif received == count and not done.done():
            done.set_result(None)

    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as directory:
        target = await HandoffChannel.open(directory, 1, deliver)
        sender = await HandoffChannel.open(directory, 0, lambda *args: None)
        try:
            sender.send(1, messages[0], here, here)  # connected before the clock starts
            await asyncio.wait_for(warm, 10)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for start in range(0, count, burst):
                for data in messages[start:start + burst]:
                    sender.send(1, data, here, here)
                await asyncio.sleep(0)  # the receiving end reads between bursts
            await asyncio.wait_for(done, 30)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            sender.close()
            target.close()
    return {"messages": count, "burst": burst, "message_bytes": len(messages[0]),
            "wall_us_per_message": round(wall * 1e6 / count, 3),
            "cpu_us_per_message": round(cpu * 1e6 / count, 3)}


def handoff_us(count: int, burst: int = 32) -> dict[str, float]:
    """µs per message handed from one channel to another (both ends in this process, on
    uvloop as the workers run), a burst at a time."""
    import uvloop

    return uvloop.run(_handoff(count, burst))


def calls(rate: float, duration: float, workdir: Path, binary: str) -> dict[str, Any]:
    """One step at `rate` with 1 worker, with 2 workers behind one address, and with 2
    workers on a port each (one UAC per port: no message changes worker), which tells the
    price of a second worker from the price of the routing."""
    out: dict[str, Any] = {}
    for workers, shared in ((1, True), (2, True), (2, False)):
        system = SwitchboardRay(workers, shared_port=shared)
        system.start(workdir / system.name)
        try:
            time.sleep(system.warmup_s)
            step = callrate.run_step(system, rate, duration, workdir / system.name / "step",
                                     sipp_binary=binary)
            try:
                handoff = system.statistics("handoff:")
            except Exception:  # a port each: no hand-off channel, no such statistics
                handoff = {}
        finally:
            system.stop()
        out[f"workers_{workers}" + ("" if shared else "_port_each")] = {
            "successful_calls": step.successful_calls, "failed_calls": step.failed_calls,
            "completed_rate": step.completed_rate, "retransmissions": step.retransmissions,
            "clean": step.clean, "reasons": step.reasons,
            "cpu_ms_per_call_all_processes": step.cpu_ms_per_call,
            "cpu_ms_per_call_workers": step.worker_cpu_ms_per_call,
            "proxy_processes": step.proxy_processes,
            "host_cpu_busy_pct": step.host_cpu_busy_pct,
            "handoff": handoff,
        }
    one, two, each = out["workers_1"], out["workers_2"], out["workers_2_port_each"]
    for key in ("cpu_ms_per_call_all_processes", "cpu_ms_per_call_workers"):
        if one[key] and two[key]:
            out[f"ratio_{key}"] = round(two[key] / one[key], 3)
        if each[key] and two[key]:
            out[f"ratio_to_port_each_{key}"] = round(two[key] / each[key], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shared_port",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="calls/s (default 300)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--messages", type=int, default=20000,
                        help="messages for the isolated hand-off (default 20000)")
    parser.add_argument("--no-calls", action="store_true", help="only the isolated parts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    import switchboard

    record: dict[str, Any] = {"build": switchboard.BUILD, "rate": args.rate,
                              "duration_s": args.duration,
                              "classification_us": classification_us(args.messages),
                              "handoff": handoff_us(args.messages)}
    print(json.dumps({k: record[k] for k in ("build", "classification_us", "handoff")},
                     indent=2), flush=True)
    if not args.no_calls:
        binary = sipp_binary()
        if binary is None:
            print("sipp not found: apt-get install sip-tester", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="bench-shared-port-") as tmp:
            record["calls"] = calls(args.rate, args.duration, Path(tmp), binary)
        print(json.dumps(record["calls"], indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"shared_port-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
