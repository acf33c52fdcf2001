"""Events: how many events per second switchboard delivers to a datagram subscriber.

switchboard is started with `--event-datagram udp:127.0.0.1:<port>` (every event, one JSON-RPC
notification per datagram) toward a socket the bench holds, with a 4 MB receive buffer (the
kernel's `net.core.rmem_max` caps it) and a thread that reads it. Then steps of short SIPp calls
(scenarios/uac.xml) at rising rates: each call that completes changes its dialog's state four
times (1→2 on the 180, 2→3 on the 200, 3→4 on the ACK, 4→5 on the BYE), each an
`E_DLG_STATE_CHANGED` event. Per step: events received vs expected (4 x calls completed),
events per second received, where the missing ones went (the event bus's own
`evi:dropped_events` counter; the subscriber socket's kernel drops from /proc/net/udp), and the
proxy's CPU per call with the subscriber, to hold against the call-rate part's (without one).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import proc, sipp
from .load import Uacs, Uas, failure
from .render import section
from .systems import Switchboard

EVENTS_PER_CALL = 4  # E_DLG_STATE_CHANGED: 1→2, 2→3, 3→4, 4→5
_METHOD = re.compile(rb'"method":"(E_[A-Z_]+)"')
_NEW_STATE = re.compile(rb'"new_state":(\d)')


class Receiver(threading.Thread):
    """Counts the event datagrams that reach a socket on 127.0.0.1."""

    def __init__(self, limit_s: float = 3600.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.limit_s = limit_s
        self.lock = threading.Lock()
        self.by_event: dict[str, int] = {}
        self.by_state: dict[str, int] = {}
        self.total = 0
        self.bad = 0
        self.first: float | None = None
        self.last: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            m = _METHOD.search(data)
            with self.lock:
                self.total += 1
                if self.first is None:
                    self.first = now
                self.last = now
                if m is None:
                    self.bad += 1
                    continue
                name = m.group(1).decode()
                self.by_event[name] = self.by_event.get(name, 0) + 1
                s = _NEW_STATE.search(data)
                if s is not None:
                    key = s.group(1).decode()
                    self.by_state[key] = self.by_state.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"total": self.total, "by_event": dict(self.by_event),
                    "by_state": dict(self.by_state), "bad": self.bad}

    def reset(self) -> None:
        with self.lock:
            self.total = self.bad = 0
            self.by_event.clear()
            self.by_state.clear()
            self.first = self.last = None

    def finish(self) -> None:
        self._stop_event.set()
        self.join(2)
        self.sock.close()


@dataclass(slots=True)
class EventStep:
    offered_rate: float
    duration_s: float
    calls_ok: int = 0
    calls_failed: int = 0
    expected: int = 0  # EVENTS_PER_CALL x calls ok
    received: int = 0  # E_DLG_STATE_CHANGED datagrams that arrived
    received_all: int = 0  # every event datagram
    by_state: dict[str, int] = field(default_factory=dict)
    delivered_pct: float | None = None
    events_per_s: float = 0.0  # received ÷ the step's wall time
    bus_dropped: int = 0  # evi:dropped_events growth
    socket_drops: int = 0  # kernel drops at the subscriber's socket
    proxy_cpu_pct: float = 0.0
    cpu_ms_per_call: float | None = None
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(step: EventStep) -> EventStep:
    """Derived numbers of a step from its counts (pure)."""
    step.expected = EVENTS_PER_CALL * step.calls_ok
    step.delivered_pct = (round(100 * step.received / step.expected, 2)
                          if step.expected else None)
    step.events_per_s = round(step.received / step.elapsed_s, 1) if step.elapsed_s > 0 else 0.0
    return step


Say = Callable[[str], None]


def run(workdir: Path, *, sipp_binary: str, rates: Sequence[float], duration: float,
        say: Say = print) -> dict[str, Any]:
    receiver = Receiver()
    receiver.start()
    system = Switchboard(extra_args=["--event-datagram", f"udp:127.0.0.1:{receiver.port}"])
    out: dict[str, Any] = {"system": {"name": system.name, "label": system.label},
                           "settings": {"rates": list(rates), "duration_s": duration,
                                        "subscriber": f"udp:127.0.0.1:{receiver.port}"},
                           "steps": [], "error": None}
    try:
        system.start(workdir)
        out["system"] = system.describe()
        time.sleep(system.warmup_s)
        for rate in rates:
            receiver.reset()
            step = EventStep(offered_rate=rate, duration_s=duration)
            uas = Uas(sipp_binary, workdir / f"{rate:g}", timeout_s=int(duration + 60))
            pids = system.pids()
            dropped0 = system.statistics("evi:dropped_events").get("evi:dropped_events", 0)
            sock_drops0 = proc.udp_drops({receiver.port})
            cpu0, t0 = proc.cpu_seconds(pids), time.monotonic()
            uac = Uacs(sipp_binary, system, workdir / f"{rate:g}", name="uac", uas=uas,
                       rate=rate, calls=max(1, int(rate * duration)),
                       timeout_s=int(duration + 40))
            uac.wait(duration + 45)
            elapsed = time.monotonic() - t0
            cpu1 = proc.cpu_seconds(pids)
            time.sleep(1.0)  # the last events on their way
            uas.stop()
            stats = uac.stats()
            snap = receiver.snapshot()
            step.calls_ok = sipp.stat_int(stats, "SuccessfulCall(C)")
            step.calls_failed = (sipp.stat_int(stats, "FailedCall(C)")
                                 + sipp.stat_int(uas.stats(), "FailedCall(C)"))
            step.received = snap["by_event"].get("E_DLG_STATE_CHANGED", 0)
            step.received_all = snap["total"]
            step.by_state = snap["by_state"]
            step.bus_dropped = system.statistics("evi:dropped_events").get(
                "evi:dropped_events", 0) - dropped0
            step.socket_drops = proc.udp_drops({receiver.port}) - sock_drops0
            step.elapsed_s = round(elapsed, 2)
            step.proxy_cpu_pct = round(100 * (cpu1 - cpu0) / elapsed, 1) if elapsed else 0.0
            step.cpu_ms_per_call = (round((cpu1 - cpu0) * 1000 / step.calls_ok, 4)
                                    if step.calls_ok else None)
            summarize(step)
            out["steps"].append(step.to_json())
            say(step_line(step))
            time.sleep(0.5)
    except Exception as exc:
        out["error"] = failure(exc)
    finally:
        system.stop()
        receiver.finish()
    return out


def step_line(s: EventStep) -> str:
    return (f"  events {s.offered_rate:>6.0f} calls/s: {s.received}/{s.expected} events "
            f"({s.delivered_pct}%), {s.events_per_s:.0f} events/s; bus dropped "
            f"{s.bus_dropped}, socket drops {s.socket_drops}; {s.calls_ok} calls ok, "
            f"{s.calls_failed} failed; proxy CPU {s.proxy_cpu_pct:.0f}%, "
            f"{s.cpu_ms_per_call} ms/call")


def markdown(data: dict[str, Any], callrate_cpu: dict[float, float] | None = None
             ) -> list[str]:
    """`callrate_cpu`: the call-rate part's switchboard CPU ms/call by rate (no subscriber)."""
    lines = section(
        "## Events",
        ["switchboard with a datagram subscriber for every event "
         f"(`--event-datagram {data.get('settings', {}).get('subscriber', 'udp:…')}`), short "
         f"SIPp calls for {data.get('settings', {}).get('duration_s')} s per step; "
         f"{EVENTS_PER_CALL} `E_DLG_STATE_CHANGED` expected per completed call."],
        data.get("error"),
        "| calls/s | calls ok / failed | events received / expected | delivered % | events/s "
        "| bus dropped | socket drops | proxy CPU % | CPU ms/call | CPU ms/call without "
        "subscriber |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    )
    for s in data.get("steps", []):
        without = (callrate_cpu or {}).get(float(s["offered_rate"]))
        lines.append(
            f"| {s['offered_rate']:g} | {s['calls_ok']} / {s['calls_failed']} "
            f"| {s['received']} / {s['expected']} | {s['delivered_pct']} "
            f"| {s['events_per_s']:.0f} | {s['bus_dropped']} | {s['socket_drops']} "
            f"| {s['proxy_cpu_pct']:.0f} | {s['cpu_ms_per_call']} "
            f"| {without if without is not None else '—'} |")
    best = max((s["events_per_s"] for s in data.get("steps", [])
                if s.get("delivered_pct") is not None and s["delivered_pct"] >= 99.9),
               default=None)
    lines += ["", f"- highest events/s delivered in full (≥ 99.9 %): "
              f"{best:.0f}" if best is not None else "- no step delivered every event", ""]
    return lines
