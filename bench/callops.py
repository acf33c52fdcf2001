"""Call operations under load: `callops:hold`, `callops:unhold` and `callops:transfer` sent to
switchboard's MI while it carries calls, timed from the command to the request on the wire.

The setting, all on 127.0.0.1:

- background: N long calls up (SIPp, scenarios/uac_long.xml, held for the whole run) and a
  steady rate of short calls (SIPp, scenarios/uac.xml), through the proxy to one SIPp UAS;
- the measured calls: M calls between two Python user agents on one socket (bench/party.py),
  placed through the proxy like any other;
- an MI client on kept-alive HTTP connections sending one operation after another to those M
  calls, round robin, each call going hold → unhold → transfer (a blind transfer of the
  callee to `sip:c@<party>`; the party answers the REFER with 202 and a NOTIFY "200 OK" that
  ends the subscription, the call stays up), so no call ever has two operations in flight.

Command-to-wire time of one operation: from just before the MI request is written to its
connection (realtime clock) to the kernel's arrival stamp (SO_TIMESTAMPNS) of the first
re-INVITE (hold, unhold: one to each leg) or the REFER (transfer) at the party's socket. It
holds the HTTP request, the MI dispatch, the call-operation code and the send, and whatever
SIP work the proxy's event loop had queued in front of the command. Also kept: the MI answer
time (request written → whole answer read).

Phases: steady rates (operations sent on a fixed schedule, whatever the answers do: open
loop), then a closed-loop burst (K connections, each sending its next operation as soon as
the previous one is answered) for the most operations per second. The target of issue 4 is a
command-to-wire p99 under 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import proc, sipp
from .load import Uacs, Uas, failure, stop_all
from .party import Party
from .render import section
from .systems import Switchboard

TARGET_P99_MS = 5.0
OP_CYCLE = ("hold", "unhold", "transfer")
WIRE_METHOD = {"hold": "INVITE", "unhold": "INVITE", "transfer": "REFER"}


# --- pure ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    return sipp.percentile(values, pct)


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    """count, p50, p90, p99, max (ms, 3 decimals) of some latencies."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"count": len(values), "p50_ms": r(percentile(values, 50)),
            "p90_ms": r(percentile(values, 90)), "p99_ms": r(percentile(values, 99)),
            "max_ms": r(max(values) if values else None)}


@dataclass(slots=True)
class Sample:
    op: str
    call_id: str
    sent_ns: int
    wire_ms: float | None = None  # first REFER / re-INVITE
    second_wire_ms: float | None = None  # hold/unhold: the re-INVITE to the other leg
    reply_ms: float | None = None
    error: str | None = None

    def arrived(self, method: str, stamp_ns: int) -> None:
        if method != WIRE_METHOD[self.op] or stamp_ns < self.sent_ns:
            return
        ms = (stamp_ns - self.sent_ns) / 1e6
        if self.wire_ms is None:
            self.wire_ms = ms
        elif self.second_wire_ms is None:
            self.second_wire_ms = ms


def summarize_phase(name: str, samples: Sequence[Sample], seconds: float, *,
                    offered_rate: float | None, concurrency: int) -> dict[str, Any]:
    """One phase's samples → its numbers (pure)."""
    ok = [s for s in samples if s.error is None]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    wire = [s.wire_ms for s in ok if s.wire_ms is not None]
    out: dict[str, Any] = {
        "phase": name,
        "offered_rate": offered_rate,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "ops_sent": len(samples),
        "ops_ok": len(ok),
        "ops_failed": len(samples) - len(ok),
        "errors": errors,
        "missing_on_wire": sum(1 for s in ok if s.wire_ms is None),
        "ops_per_s": round(len(ok) / seconds, 1) if seconds > 0 else 0.0,
        "wire": latency_summary(wire),
        "reply": latency_summary([s.reply_ms for s in ok if s.reply_ms is not None]),
        "by_op": {},
    }
    for op in OP_CYCLE:
        mine = [s.wire_ms for s in ok if s.op == op and s.wire_ms is not None]
        if mine:
            out["by_op"][op] = latency_summary(mine)
    both = [s.second_wire_ms for s in ok if s.second_wire_ms is not None]
    if both:
        out["hold_second_leg"] = latency_summary(both)
    return out


# --- the MI over asyncio, timed at the write ----------------------------------------------


class AsyncMi:
    """JSON-RPC over one kept-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int, path: str = "/mi") -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ids = itertools.count(1)

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def call(self, method: str, params: Any, on_sent: Callable[[int], None]) -> Any:
        """Send; `on_sent(realtime ns)` runs right before the bytes are written. Returns the
        result; raises RuntimeError("<code> <message>") for a JSON-RPC error."""
        if self.writer is None or self.reader is None:
            await self.connect()
        assert self.writer is not None and self.reader is not None
        body = json.dumps({"jsonrpc": "2.0", "id": next(self.ids), "method": method,
                           "params": params}).encode()
        request = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   "Content-Type: application/json\r\nConnection: keep-alive\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        on_sent(time.time_ns())
        self.writer.write(request)
        status = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        data = await self.reader.readexactly(length) if length else b""
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"HTTP {status.decode().strip()}")
        answer = json.loads(data)
        if "error" in answer:
            err = answer["error"]
            raise RuntimeError(f"{err.get('code')} {err.get('message')}")
        return answer.get("result")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


# --- the operations driver ------------------------------------------------------------------


class Driver:
    def __init__(self, mi_host: str, mi_port: int, party: Party) -> None:
        self.mi_host, self.mi_port = mi_host, mi_port
        self.party = party
        self.pending: dict[str, Sample] = {}
        self.calls: list[str] = []
        self.next_op: dict[str, int] = {}
        self.rr = itertools.count()
        party.on_arrival = self._arrival
        self.idle: list[AsyncMi] = []

    def _arrival(self, method: str, call_id: str, stamp: int) -> None:
        sample = self.pending.get(call_id)
        if sample is not None:
            sample.arrived(method, stamp)

    def _next(self) -> tuple[str, str]:
        call_id = self.calls[next(self.rr) % len(self.calls)]
        i = self.next_op.get(call_id, 0)
        self.next_op[call_id] = i + 1
        return call_id, OP_CYCLE[i % len(OP_CYCLE)]

    def _params(self, op: str, call_id: str) -> dict[str, Any]:
        if op == "transfer":
            return {"callid": call_id, "leg": "callee",
                    "destination": f"sip:c@{self.party.host}"}
        return {"callid": call_id}

    async def _conn(self) -> AsyncMi:
        if self.idle:
            return self.idle.pop()
        conn = AsyncMi(self.mi_host, self.mi_port)
        await conn.connect()
        return conn

    async def one(self, samples: list[Sample]) -> None:
        call_id, op = self._next()
        sample = Sample(op, call_id, 0)
        samples.append(sample)
        self.pending[call_id] = sample

        def sent(ns: int) -> None:
            sample.sent_ns = ns

        conn = await self._conn()
        try:
            await asyncio.wait_for(conn.call(f"callops:{op}", self._params(op, call_id), sent),
                                   10.0)
            sample.reply_ms = (time.time_ns() - sample.sent_ns) / 1e6
            self.idle.append(conn)
        except Exception as exc:
            sample.error = str(exc)[:80] or type(exc).__name__
            await conn.close()

    async def steady(self, rate: float, seconds: float) -> tuple[list[Sample], float]:
        samples: list[Sample] = []
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self.one(samples))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        elapsed = loop.time() - t0
        await asyncio.sleep(0.5)  # late arrivals
        return samples, elapsed

    async def burst(self, concurrency: int, seconds: float) -> tuple[list[Sample], float]:
        samples: list[Sample] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + seconds

        async def worker() -> None:
            for _ in range(1_000_000):  # bounded; the clock ends it first
                if loop.time() >= end:
                    return
                await self.one(samples)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = loop.time() - t0
        await asyncio.sleep(0.5)
        return samples, elapsed

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()
        self.idle.clear()


# --- a run ----------------------------------------------------------------------------------


@dataclass(slots=True)
class CallopsRun:
    system: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    background: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    party: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Say = Callable[[str], None]


class _Meter:
    """CPU of the proxy, SIPp and the rest of the machine, and background calls failed, over
    one phase."""

    def __init__(self, pids: list[int], loadgen: list[int],
                 failed: Callable[[], int]) -> None:
        self.pids, self.loadgen, self.failed = pids, loadgen, failed
        self.cpu0 = proc.cpu_seconds(pids)
        self.lg0 = proc.cpu_seconds(loadgen)
        self.me0 = proc.cpu_seconds([os.getpid()])
        self.busy0, self.total0 = proc.host_cpu_times()
        self.failed0 = failed()
        self.t0 = time.monotonic()

    def into(self, phase: dict[str, Any]) -> None:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        busy1, total1 = proc.host_cpu_times()
        host = proc.busy_pct_of_one_core(busy1 - self.busy0, total1 - self.total0)
        proxy = 100 * (proc.cpu_seconds(self.pids) - self.cpu0) / elapsed
        loadgen = 100 * (proc.cpu_seconds(self.loadgen) - self.lg0) / elapsed
        me = 100 * (proc.cpu_seconds([os.getpid()]) - self.me0) / elapsed
        phase["proxy_cpu_pct"] = round(proxy, 1)
        phase["loadgen_cpu_pct"] = round(loadgen, 1)
        phase["bench_cpu_pct"] = round(me, 1)  # the MI client and the user agents
        phase["other_cpu_pct"] = round(max(0.0, host - proxy - loadgen - me), 1)
        phase["background_failed_calls"] = self.failed() - self.failed0


async def _operate(system: Switchboard, run: CallopsRun, *, measured_calls: int,
                   rates: Sequence[float], seconds: float, burst_s: float,
                   concurrency: int, say: Say, loadgen: list[int],
                   failed: Callable[[], int]) -> None:
    party = Party(system.address)
    party.start()
    driver = Driver("127.0.0.1", system.mi_port or 0, party)
    try:
        futures = []
        for i in range(measured_calls):
            futures.append(party.confirmed.setdefault(party.place_call(), asyncio.Future()))
            if i % 50 == 49:
                await asyncio.sleep(0.1)
        await asyncio.wait([asyncio.ensure_future(_wait(f)) for f in futures],
                                     timeout=15)
        driver.calls = party.up_calls("a")
        if len(driver.calls) < measured_calls:
            say(f"  callops: only {len(driver.calls)} of {measured_calls} measured calls up")
        if not driver.calls:
            raise RuntimeError("no measured call came up")
        await driver.steady(min(rates) if rates else 50, 1.0)  # warm-up, not counted
        pids = system.pids()
        for rate in rates:
            meter = _Meter(pids, loadgen, failed)
            samples, elapsed = await driver.steady(rate, seconds)
            phase = summarize_phase(f"steady {rate:g}/s", samples, elapsed,
                                    offered_rate=rate, concurrency=1)
            meter.into(phase)
            run.phases.append(phase)
            say(phase_line(phase))
        if burst_s > 0:
            meter = _Meter(pids, loadgen, failed)
            samples, elapsed = await driver.burst(concurrency, burst_s)
            phase = summarize_phase(f"burst x{concurrency}", samples, elapsed,
                                    offered_rate=None, concurrency=concurrency)
            meter.into(phase)
            run.phases.append(phase)
            say(phase_line(phase))
        for call_id in driver.calls:
            party.hang_up(call_id)
        await asyncio.sleep(0.5)
    finally:
        await driver.close()
        run.party = {"port": party.port, "kernel_timestamps": party.kernel_stamps,
                     "counts": dict(sorted(party.counts.items()))}
        party.close()


async def _wait(fut: asyncio.Future[bool]) -> bool:
    return await fut


def run(workdir: Path, *, sipp_binary: str, long_calls: int, background_rate: float,
        measured_calls: int, rates: Sequence[float], seconds: float, burst_s: float,
        concurrency: int = 4, fill_rate: float = 1000.0, say: Say = print,
        system: Switchboard | None = None) -> CallopsRun:
    system = system or Switchboard()
    out = CallopsRun(system={"name": system.name, "label": system.label}, settings={
        "long_calls": long_calls, "background_rate": background_rate,
        "measured_calls": measured_calls, "rates": list(rates), "seconds": seconds,
        "burst_s": burst_s, "concurrency": concurrency, "fill_rate": fill_rate,
    })
    uas: Uas | None = None
    loads: list[Uacs] = []
    try:
        system.start(workdir)
        out.system = system.describe()
        time.sleep(system.warmup_s)
        total_s = (long_calls / fill_rate + len(rates) * (seconds + 1) + burst_s + 60)
        uas = Uas(sipp_binary, workdir, timeout_s=int(total_s + 120))
        if long_calls:
            loads.append(Uacs(sipp_binary, system, workdir / "long", name="long", uas=uas,
                              rate=fill_rate, calls=long_calls,
                              scenario=sipp.UAC_LONG_SCENARIO,
                              extra=["-d", str(int(total_s * 1000 + 120_000))],
                              limit=long_calls + 10, timeout_s=int(total_s + 120)))
            deadline = time.monotonic() + long_calls / fill_rate * 2 + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if system.statistics("dialog:active_dialogs").get(
                        "dialog:active_dialogs", 0) >= long_calls:
                    break
        if background_rate > 0:
            calls = int(background_rate * total_s)
            loads.append(Uacs(sipp_binary, system, workdir / "short", name="short", uas=uas,
                              rate=background_rate, calls=calls,
                              timeout_s=int(total_s + 60)))
            time.sleep(1.0)
        held = system.statistics("dialog:active_dialogs").get("dialog:active_dialogs", 0)
        out.background["dialogs_before"] = held
        def failed() -> int:
            return sum(sipp.stat_int(load.stats(), "FailedCall(C)") for load in loads) + (
                sipp.stat_int(uas.stats(), "FailedCall(C)") if uas is not None else 0)

        loadgen = [pid for load in loads for pid in load.pids] + [uas.proc.pid]
        asyncio.run(_operate(system, out, measured_calls=measured_calls, rates=rates,
                             seconds=seconds, burst_s=burst_s, concurrency=concurrency,
                             say=say, loadgen=loadgen, failed=failed))
        stats = system.statistics("dialog:active_dialogs", "tm:inuse_transactions")
        out.background["dialogs_after"] = stats.get("dialog:active_dialogs")
        out.background["transactions_after"] = stats.get("tm:inuse_transactions")
        for load in loads:
            key = load.procs[0].name if load.procs else "?"
            st = load.stats()
            out.background[f"{key}_failed_calls"] = sipp.stat_int(st, "FailedCall(C)")
            out.background[f"{key}_calls_started"] = sipp.stat_int(st, "OutgoingCall(C)")
            out.background[f"{key}_retransmissions"] = sipp.stat_int(st, "Retransmissions(C)")
    except Exception as exc:
        out.error = failure(exc)
    finally:
        stop_all(system, *loads, uas)
    return out


def phase_line(p: dict[str, Any]) -> str:
    w = p["wire"]
    errors = f", errors {p['errors']}" if p["errors"] else ""
    missing = f", {p['missing_on_wire']} never seen on the wire" if p["missing_on_wire"] else ""
    return (f"  callops {p['phase']:<14} {p['ops_ok']:>5} ok / {p['ops_sent']} sent, "
            f"{p['ops_per_s']:.0f} ops/s; command-to-wire p50 {w['p50_ms']} ms, p99 "
            f"{w['p99_ms']} ms, max {w['max_ms']} ms; MI answer p99 {p['reply']['p99_ms']} ms; "
            f"proxy CPU {p.get('proxy_cpu_pct', 0):.0f}% (SIPp {p.get('loadgen_cpu_pct', 0):.0f}"
            f"%, bench {p.get('bench_cpu_pct', 0):.0f}%, other {p.get('other_cpu_pct', 0):.0f}"
            "%); background calls failed "
            f"{p.get('background_failed_calls', 0)}{errors}{missing}")


# --- report -----------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> list[str]:
    s, bg = data.get("settings", {}), data.get("background", {})
    lines = section(
        "## Call operations under load",
        [f"switchboard carrying {bg.get('dialogs_before', '?')} dialogs "
         f"({s.get('long_calls')} long SIPp calls and {s.get('background_rate'):g} short "
         f"calls/s), and {s.get('measured_calls')} calls between two Python user agents that "
         "receive the operations. Operations go round robin over those calls, each call "
         "hold → unhold → blind transfer of the callee (REFER answered 202 + NOTIFY 200). "
         "Command-to-wire: MI request written → the first re-INVITE / REFER's arrival at the "
         "user agents' socket (kernel timestamp). Per-operation p99s rest on a third of the "
         "samples each. Bench CPU: the MI client and the user agents (one Python process); "
         f"other: the rest of the machine. Target (issue 4): p99 under {TARGET_P99_MS:g} ms."],
        data.get("error"),
        "| phase | ops ok / sent | ops/s | wire p50 ms | wire p90 ms | wire p99 ms | wire max ms "
        "| hold p99 | unhold p99 | transfer p99 | MI answer p99 ms | proxy CPU % | SIPp CPU % "
        "| bench CPU % | other CPU % | background calls failed | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    for p in data.get("phases", []):
        w, by = p["wire"], p.get("by_op", {})
        errs = ", ".join(f"{k} x{v}" for k, v in p.get("errors", {}).items()) or "—"
        if p.get("missing_on_wire"):
            errs += f"; {p['missing_on_wire']} not seen on the wire"
        lines.append(
            f"| {p['phase']} | {p['ops_ok']} / {p['ops_sent']} | {p['ops_per_s']:.0f} "
            f"| {_v(w['p50_ms'])} | {_v(w['p90_ms'])} | {_v(w['p99_ms'])} | {_v(w['max_ms'])} "
            f"| {_v(by.get('hold', {}).get('p99_ms'))} "
            f"| {_v(by.get('unhold', {}).get('p99_ms'))} "
            f"| {_v(by.get('transfer', {}).get('p99_ms'))} | {_v(p['reply']['p99_ms'])} "
            f"| {p.get('proxy_cpu_pct', 0):.0f} | {p.get('loadgen_cpu_pct', 0):.0f} "
            f"| {p.get('bench_cpu_pct', 0):.0f} | {p.get('other_cpu_pct', 0):.0f} "
            f"| {p.get('background_failed_calls', 0)} "
            f"| {errs} |")
    lines.append("")
    steady = [p for p in data.get("phases", []) if p.get("offered_rate")]
    if steady:
        worst = max((p["wire"]["p99_ms"] or 0.0) for p in steady)
        verdict = "met" if worst < TARGET_P99_MS else "**not met**"
        lines += [f"- command-to-wire p99 (worst steady phase): {worst:g} ms against "
                  f"< {TARGET_P99_MS:g} ms — {verdict}"]
    burst = [p for p in data.get("phases", []) if not p.get("offered_rate")]
    if burst:
        lines += [f"- most operations per second (closed loop, {burst[0]['concurrency']} "
                  f"connections): {burst[0]['ops_per_s']:.0f}"]
    failed = {k: v for k, v in bg.items() if k.endswith("_failed_calls") and v}
    lines += [f"- background calls failed meanwhile: {failed or 'none'}", ""]
    return lines


def _v(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def plot(data: dict[str, Any], stem: Path) -> list[Path]:
    """Not a plot of its own: the phases are few; the table says it."""
    return []
