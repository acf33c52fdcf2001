"""SIP over TLS and secure WebSocket, switchboard side by side with Kamailio's `tls` module:
`python -m bench --only tls`, or alone as `python -m bench.tls`.

Calls (both systems up for the whole part, their steps interleaved: for each mode and rate,
switchboard then Kamailio), SIPp UAC -> proxy -> SIPp UAS at fixed offered rates:

- `udp`: UDP -> UDP, the call-rate part's step (`callrate.run_step`);
- `tls`: the UAC over TLS with one connection for every call (SIPp `-t t1` behind a stunnel
  client: SIPp is built without TLS), the UAS over UDP;
- `tls-per-call`: the same with one TCP connection per call (`-t tn`), so stunnel opens one
  TLS connection, with a full handshake (session resumption off), per call.

The proxy's CPU per call counts its own processes only; stunnel's CPU is read apart and not
charged to it.

Idle connections: N TLS (and WSS) connections opened from this process, each completing its
handshake and one OPTIONS answered over it, then the proxy's memory (PSS and RSS over all its
processes, Kamailio's shared-memory use from `core.shmmem`) against before: bytes per
connection.

Everything listens on 127.0.0.1 at ports chosen at run time. The certificates are made for
the run (`tests/support/certs.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.certs import TestPki, make_pki
from tests.support.ports import free_port, wait_listening
from tests.support.sipp import sipp_binary as find_sipp
from tests.support.stunnel import stunnel_binary

from . import callrate, proc, sipp, systems
from .record import JsonRecord
from .render import section

MODES = ("udp", "tls", "tls-per-call")
SIPP_TRANSPORT = {"tls": "t1", "tls-per-call": "tn"}
UAC_TLS_SCENARIO = sipp.SCENARIOS / "uac_tls.xml"
RATES = (100.0, 200.0, 400.0)
DURATION_S = 10.0
CONNECTIONS = 10_000
SYSTEMS = ("switchboard", "kamailio")
SETTLE_S = 1.0
SIPP_MAX_SOCKETS = 4096  # connections one SIPp may hold (tn: calls up at once)
OPEN_CONCURRENCY = 64  # handshakes in flight at once while opening idle connections

Say = Callable[[str], None]
NO_KAMAILIO_WSS = "not measured (--no-kamailio-websocket)"


# --- records and what is computed from them (pure) -------------------------------------------


@dataclass(slots=True)
class TransportStep(JsonRecord):
    """One step of one system in one mode."""

    system: str
    mode: str
    offered_rate: float
    planned_calls: int
    successful_calls: int = 0
    failed_calls: int = 0
    completed_rate: float = 0.0
    elapsed_s: float = 0.0
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    proxy_cpu_s: float = 0.0
    cpu_ms_per_call: float | None = None
    stunnel_cpu_s: float = 0.0
    stunnel_cpu_ms_per_call: float | None = None
    proxy_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    """SIPp (UAC + UAS) and stunnel, % of one core."""
    other_cpu_pct: float = 0.0
    proxy_udp_drops: int = 0
    """Datagrams the kernel dropped at the proxy's UDP socket (receive buffer full): the
    callee's answers lost there come back as INVITE retransmissions toward it."""
    clean: bool = False
    reasons: list[str] = field(default_factory=list)


def transport_step(system: str, mode: str, step: callrate.StepResult,
                   stunnel_cpu_s: float = 0.0) -> TransportStep:
    """A call-rate step (its verdict included) as this part's record."""
    ok = step.successful_calls
    return TransportStep(
        system=system, mode=mode, offered_rate=step.offered_rate,
        planned_calls=step.planned_calls, successful_calls=ok,
        failed_calls=step.failed_calls, completed_rate=step.completed_rate,
        elapsed_s=step.elapsed_s, rtt_p50_ms=step.rtt_p50_ms, rtt_p99_ms=step.rtt_p99_ms,
        proxy_cpu_s=step.proxy_cpu_s, cpu_ms_per_call=step.cpu_ms_per_call,
        stunnel_cpu_s=round(stunnel_cpu_s, 3),
        stunnel_cpu_ms_per_call=(round(stunnel_cpu_s * 1000 / ok, 4)
                                 if ok and mode != "udp" else None),
        proxy_cpu_pct=step.proxy_cpu_pct, loadgen_cpu_pct=step.loadgen_cpu_pct,
        other_cpu_pct=step.other_cpu_pct, proxy_udp_drops=step.proxy_udp_drops,
        clean=step.clean, reasons=list(step.reasons),
    )


@dataclass(slots=True)
class IdleMemory(JsonRecord):
    """Memory of a proxy holding idle connections of one kind (`tls` or `wss`)."""

    system: str
    kind: str
    connections: int
    opened: int = 0
    failed: int = 0
    first_failure: str | None = None
    open_s: float = 0.0
    rss_kb_before: int = 0
    rss_kb_after: int = 0
    pss_kb_before: int = 0
    pss_kb_after: int = 0
    shm_bytes_before: int | None = None
    shm_bytes_after: int | None = None
    pss_bytes_per_connection: float | None = None
    rss_bytes_per_connection: float | None = None
    shm_bytes_per_connection: float | None = None
    error: str | None = None

    def account(self) -> None:
        """The per-connection figures from the readings (growth ÷ connections opened)."""
        self.pss_bytes_per_connection = per_connection(
            self.pss_kb_before * 1024, self.pss_kb_after * 1024, self.opened)
        self.rss_bytes_per_connection = per_connection(
            self.rss_kb_before * 1024, self.rss_kb_after * 1024, self.opened)
        if self.shm_bytes_before is not None and self.shm_bytes_after is not None:
            self.shm_bytes_per_connection = per_connection(
                self.shm_bytes_before, self.shm_bytes_after, self.opened)


def per_connection(before: int, after: int, connections: int) -> float | None:
    """Bytes of growth per connection, rounded; None without connections."""
    if connections <= 0:
        return None
    return round((after - before) / connections, 1)


def side_by_side(steps: Iterable[TransportStep], subject: str = "switchboard",
                 reference: str = "kamailio") -> list[dict[str, Any]]:
    """One row per (mode, rate) in the order first seen: each system's step, the ratio of
    CPU per call subject / reference, and each system's CPU per call against its own UDP
    step at the same rate (what the transport costs it)."""
    by_key: dict[tuple[str, float], dict[str, TransportStep]] = {}
    for step in steps:
        by_key.setdefault((step.mode, step.offered_rate), {})[step.system] = step
    rows: list[dict[str, Any]] = []
    for (mode, rate), found in by_key.items():
        row: dict[str, Any] = {"mode": mode, "offered_rate": rate, "systems": {}}
        for name, step in found.items():
            udp = by_key.get(("udp", rate), {}).get(name)
            base = udp.cpu_ms_per_call if udp is not None and udp.clean else None
            row["systems"][name] = {
                "step": step,
                "vs_udp": _ratio(step.cpu_ms_per_call, base) if step.clean else None,
            }
        sub, ref = found.get(subject), found.get(reference)
        row["cpu_ratio"] = (_ratio(sub.cpu_ms_per_call, ref.cpu_ms_per_call)
                            if sub is not None and ref is not None and sub.clean and ref.clean
                            else None)
        rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


# --- the load generators -----------------------------------------------------------------------


def stunnel_config(log: Path, accept: int, connect: int, ca_file: Path, *,
                   resume: bool = False, check_host: str = "localhost") -> str:
    """A stunnel client: plain TCP on `accept` -> TLS to `connect`, the server's certificate
    verified against `ca_file` (by `check_host`, also sent as SNI). Without `resume` every
    connection makes a full handshake. Logging at warnings only: per-connection notices
    would cost stunnel more than the TLS."""
    return (f"foreground = yes\npid =\ndebug = 4\noutput = {log}\n"
            "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n"
            f"[sip]\nclient = yes\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n"
            f"CAfile = {ca_file}\nverifyChain = yes\ncheckHost = {check_host}\n"
            f"sni = {check_host}\nsessionResume = {'yes' if resume else 'no'}\n")


class StunnelClient:
    def __init__(self, directory: Path, accept: int, connect: int, ca_file: Path) -> None:
        binary = stunnel_binary()
        if binary is None:
            raise RuntimeError("stunnel is needed: apt-get install -y stunnel4")
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "stunnel.conf"
        conf.write_text(stunnel_config(directory / "stunnel.log", accept, connect, ca_file))
        self.accept = accept
        self.proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_listening(accept, "tcp")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_tls_step(system: systems.System, mode: str, rate: float, duration: float,
                 workdir: Path, *, sipp_binary: str, tls_port: int, ca_file: Path,
                 recv_timeout_ms: int = 5000) -> TransportStep:
    """`rate` calls/s for `duration` s from a SIPp UAC over TLS (through stunnel; one
    connection, or one per call) via `system`'s TLS listener to a SIPp UAS over UDP."""
    workdir.mkdir(parents=True, exist_ok=True)
    planned = max(1, round(rate * duration))
    uas_port = free_port("udp")
    # -nr: the UAS does not retransmit its 200. SIPp over TCP (the UAC here) aborts on an
    # assertion when a retransmitted 200 of an INVITE it has ACKed reaches it, which ends
    # the whole step; over UDP it would answer it with the ACK again.
    uas = sipp.SippProcess(
        "uas", sipp.uas_command(sipp_binary, port=uas_port, stat_file="uas_stat.csv",
                                extra=["-nr"]), workdir)
    tunnel: StunnelClient | None = None
    uac: sipp.SippProcess | None = None
    try:
        if not proc.wait_udp_bound(uas_port):
            raise RuntimeError(f"SIPp UAS did not bind {uas_port}:\n{uas.output_tail()}")
        tunnel = StunnelClient(workdir / "stunnel", free_port("tcp"), tls_port, ca_file)
        pids = system.pids()
        udp_ports = {port for _, port in system.addresses}
        drops0 = proc.udp_drops(udp_ports)
        cpu0 = proc.cpu_seconds(pids)
        st0 = proc.cpu_seconds([tunnel.proc.pid])
        busy0, total0 = proc.host_cpu_times()
        t0 = time.monotonic()
        entry = ("127.0.0.1", tunnel.accept)
        uac = sipp.SippProcess("uac", sipp.uac_command(
            sipp_binary, uas=entry, proxy=entry, local_port=free_port("tcp"), rate=rate,
            calls=planned, stat_file="uac_stat.csv", scenario=UAC_TLS_SCENARIO,
            recv_timeout_ms=recv_timeout_ms,
            timeout_s=int(duration + 10 + 2 * recv_timeout_ms / 1000),
            extra=["-t", SIPP_TRANSPORT[mode], "-key", "uas_port", str(uas_port),
                   # SIPp refuses to start when this is above the open-files limit.
                   "-max_socket", str(SIPP_MAX_SOCKETS)]), workdir)
        sipp_pids = [uac.pid, uas.pid]
        lg0 = proc.cpu_seconds(sipp_pids)
        lg_last, st_last = lg0, st0
        deadline = t0 + duration + 30 + 4 * recv_timeout_ms / 1000
        while uac.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            lg_last = proc.cpu_seconds(sipp_pids) or lg_last
            st_last = proc.cpu_seconds([tunnel.proc.pid]) or st_last
        elapsed = time.monotonic() - t0
        cpu1 = proc.cpu_seconds(pids)
        drops = proc.udp_drops(udp_ports) - drops0
        busy1, total1 = proc.host_cpu_times()
        if uac.poll() is None:
            uac.stop()
        uac.wait()
    finally:
        uas.stop()
        if uac is not None and uac.poll() is None:
            uac.stop()
        if tunnel is not None:
            tunnel.stop()
    sends = (sipp.sends_per_call(UAC_TLS_SCENARIO.read_text())
             + sipp.sends_per_call(sipp.UAS_SCENARIO.read_text()))
    step = callrate.summarize_step(
        offered_rate=rate, duration_s=duration, planned=planned,
        uac_stats=sipp.stats_of(workdir / "uac_stat.csv"),
        uas_stats=sipp.stats_of(workdir / "uas_stat.csv"),
        rtts=sipp.read_rtts(workdir), elapsed_s=elapsed, proxy_cpu_s=cpu1 - cpu0,
        proxy_processes=len(pids), rss_kb_peak=0, pss_kb_peak=0,
        loadgen_cpu_s=(lg_last - lg0) + (st_last - st0),
        host_busy_pct=proc.busy_pct_of_one_core(busy1 - busy0, total1 - total0),
        sends_per_call=sends, proxy_udp_drops=drops)
    return transport_step(system.name, mode, step, st_last - st0)


# --- idle connections ----------------------------------------------------------------------------


def options_probe(transport: str, local_port: int) -> bytes:
    """An OPTIONS to the proxy itself (Max-Forwards 0: answered, never relayed)."""
    sent_by = (f"127.0.0.1:{local_port}" if transport == "TLS"
               else f"{uuid.uuid4().hex[:10]}.invalid")
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {sent_by};branch=z9hG4bK-idle-{uuid.uuid4().hex[:12]}"
            ";rport\r\nMax-Forwards: 0\r\n"
            f"From: <sip:idle@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
            "To: <sip:127.0.0.1>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@bench\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def raise_fd_limit(wanted: int) -> int:
    """The soft limit on open files raised toward `wanted` (up to the hard limit); the
    processes started afterwards inherit it. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class IdleClients:
    """N connections held open from this process: TLS (asyncio streams over `ssl`) or WSS
    (aiohttp, subprotocol `sip`), each with its handshake done and one OPTIONS answered."""

    def __init__(self, kind: str, port: int, ca_file: Path) -> None:
        self.kind = kind
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.held: list[Any] = []
        self.failures: list[str] = []
        self._session: Any = None

    async def open(self, n: int, concurrency: int = OPEN_CONCURRENCY) -> None:
        if self.kind == "wss":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True))
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                try:
                    self.held.append(await (self._wss() if self.kind == "wss" else self._tls()))
                except Exception as exc:  # counted: the part reports how many failed
                    self.failures.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one() for _ in range(n)))

    async def _tls(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname="localhost"), 30)
        writer.write(options_probe("TLS", writer.get_extra_info("sockname")[1]))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"SIP/2.0 "):
            raise RuntimeError(f"not a SIP answer: {head[:40]!r}")
        return writer

    async def _wss(self) -> Any:
        import aiohttp

        ws = await self._session.ws_connect(
            f"wss://127.0.0.1:{self.port}/", protocols=("sip",), ssl=self.context,
            server_hostname="localhost", autoping=True, timeout=aiohttp.ClientWSTimeout(
                ws_receive=30.0, ws_close=5.0))
        if ws.protocol != "sip":
            await ws.close()
            raise RuntimeError(f"subprotocol {ws.protocol!r}")
        await ws.send_str(options_probe("WSS", 0).decode())
        msg = await asyncio.wait_for(ws.receive(), 30)
        data = msg.data if isinstance(msg.data, str) else bytes(msg.data or b"").decode()
        if not data.startswith("SIP/2.0 "):
            await ws.close()
            raise RuntimeError(f"not a SIP answer: {msg.type} {str(msg.data)[:40]!r}")
        return ws

    async def close(self) -> None:
        for conn in self.held:
            try:
                if self.kind == "wss":
                    await asyncio.wait_for(conn.close(), 2)
                else:
                    conn.close()
            except Exception:  # tearing down: nothing left to learn from it
                continue
        self.held.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def shm_used(system: systems.System) -> int | None:
    """Kamailio's shared memory in use (`core.shmmem` real_used); None for others."""
    if not isinstance(system, systems.Kamailio) or system.ctl_socket is None:
        return None
    try:
        value = systems.parse_kamcmd_struct(system.rpc("core.shmmem")).get("real_used")
    except (systems.SystemError_, OSError, subprocess.TimeoutExpired):
        return None
    return int(value) if value is not None and value.isdigit() else None


def measure_idle(system: systems.System, kind: str, port: int, connections: int,
                 ca_file: Path, *, settle_s: float = 3.0) -> IdleMemory:
    """Open `connections` idle connections of `kind` to `port`, read the system's memory
    before and after (settled), close them."""
    result = IdleMemory(system=system.name, kind=kind, connections=connections)
    before = proc.memory(system.pids())
    result.rss_kb_before, result.pss_kb_before = before.rss_kb, before.pss_kb
    result.shm_bytes_before = shm_used(system)
    clients = IdleClients(kind, port, ca_file)

    async def hold() -> None:
        t0 = time.monotonic()
        try:
            await clients.open(connections)
            result.open_s = round(time.monotonic() - t0, 1)
            await asyncio.sleep(settle_s)
            # Read while the connections are up (this loop keeps their WebSocket pings).
            after = await asyncio.to_thread(proc.memory, system.pids())
            result.rss_kb_after, result.pss_kb_after = after.rss_kb, after.pss_kb
            result.shm_bytes_after = await asyncio.to_thread(shm_used, system)
        finally:
            await clients.close()

    asyncio.run(hold())
    result.opened = connections - len(clients.failures)
    result.failed = len(clients.failures)
    result.first_failure = clients.failures[0] if clients.failures else None
    if not system.pids():
        result.error = f"{system.name} exited while its connections were opened"
        return result
    result.account()
    return result


# --- the systems ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Endpoints:
    tls_port: int
    wss_port: int | None  # None: not measured for this system


def start_switchboard(pki: TestPki, workdir: Path) -> tuple[systems.System, Endpoints]:
    """switchboard with udp, tls and wss listeners, no per-source connection limit (every
    connection of the bench comes from 127.0.0.1) and no WebSocket pings."""
    cert = pki.issue("switchboard")
    config = workdir / "switchboard.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[tls]\ncertificate = "{cert.certificate}"\nprivate_key = "{cert.private_key}"\n'
        f'ca_file = "{pki.ca_file}"\n\n[limits]\ntcp_connections_per_source = 0\n\n'
        "[websocket]\nping_interval = 0\n")
    ends = Endpoints(free_port("tcp"), free_port("tcp"))
    system = systems.Switchboard(extra_args=[
        "--config", str(config), "--listen", f"tls:127.0.0.1:{ends.tls_port}",
        "--listen", f"wss:127.0.0.1:{ends.wss_port}"])
    system.start(workdir)
    return system, ends


def start_kamailio(pki: TestPki, workdir: Path, *, children: int | None, connections: int,
                   websocket: bool, tcp_children: int = 1) -> tuple[systems.System, Endpoints]:
    """Kamailio with udp and tls listeners (`-A WITH_TLS`), WebSocket on the TLS listener
    when `websocket` (`-A WITH_WS`), its ctl socket for `core.shmmem`.

    One TCP worker (`-N 1`): with two, Kamailio 5.6.3's tls module on Debian 12's OpenSSL 3
    frees OpenSSL's memory twice in its shared-memory allocator under concurrent
    handshakes (`qm_free(): BUG: freeing already freed pointer ... tls_init.c: ser_free`)
    and loses a process, which takes the whole server down."""
    cert = pki.issue("kamailio")
    tls_port = free_port("tcp")
    # --atexit=no: the tls module's README asks for it with libssl 1.1 and later.
    extra = ["--atexit=no", "-N", str(tcp_children), "-l", f"tls:127.0.0.1:{tls_port}",
             "-A", "WITH_TLS",
             "-A", f'TLS_CERTIFICATE="{cert.certificate}"',
             "-A", f'TLS_PRIVATE_KEY="{cert.private_key}"',
             "-A", f"MAX_CONNECTIONS={connections + 1024}"]
    if websocket:
        extra += ["-A", "WITH_WS"]
    system = systems.Kamailio(children=children, ctl=True, extra_args=extra)
    system.start(workdir)
    return system, Endpoints(tls_port, tls_port if websocket else None)


# --- the part ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    rates: tuple[float, ...] = RATES
    duration: float = DURATION_S
    modes: tuple[str, ...] = MODES
    systems: tuple[str, ...] = SYSTEMS
    connections: int = CONNECTIONS
    kamailio_websocket: bool = True
    kamailio_children: int | None = None

    def settings(self) -> dict[str, Any]:
        return {"rates": list(self.rates), "duration_s": self.duration,
                "modes": list(self.modes), "systems": list(self.systems),
                "connections": self.connections, "uas": "udp",
                "kamailio_websocket": self.kamailio_websocket,
                "kamailio_children": self.kamailio_children,
                "idle_probe": "one OPTIONS (Max-Forwards: 0) answered per connection",
                "stunnel_session_resumption": False}

    def estimate_seconds(self) -> float:
        steps = len(self.rates) * len(self.modes) * len(self.systems)
        memory = len(self.systems) * 2 * (self.connections / 400 + 8)
        return steps * (self.duration + 3 + SETTLE_S) + memory + 20


def run(plan: Plan, workdir: Path, *, sipp_binary: str, say: Say = print,
        progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """The part: every step and memory reading, as the JSON record `markdown` renders."""
    out: dict[str, Any] = {"settings": plan.settings(), "steps": [], "memory": []}
    limit = raise_fd_limit(2 * plan.connections + 4096)
    out["settings"]["fd_limit"] = limit
    pki = make_pki(workdir / "pki")
    started: dict[str, tuple[systems.System, Endpoints]] = {}
    total = len(plan.rates) * len(plan.modes) * len(plan.systems) + 2 * len(plan.systems)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / total)

    try:
        for name in plan.systems:
            if name == "switchboard":
                started[name] = start_switchboard(pki, workdir / name)
            elif name == "kamailio":
                started[name] = start_kamailio(
                    pki, workdir / name, children=plan.kamailio_children,
                    connections=plan.connections, websocket=plan.kamailio_websocket)
            else:
                raise ValueError(f"the TLS part runs switchboard and kamailio, not {name!r}")
        out["systems"] = {name: s.describe() for name, (s, _) in started.items()}
        time.sleep(SETTLE_S)
        for mode in plan.modes:
            for rate in plan.rates:
                for name, (system, ends) in started.items():
                    if not system.pids():
                        continue  # exited (said once, below); the other system goes on
                    wd = workdir / f"{name}-{mode}-{rate:g}"
                    if mode == "udp":
                        step = transport_step(name, mode, callrate.run_step(
                            system, rate, plan.duration, wd, sipp_binary=sipp_binary))
                    else:
                        step = run_tls_step(system, mode, rate, plan.duration, wd,
                                            sipp_binary=sipp_binary, tls_port=ends.tls_port,
                                            ca_file=pki.ca_file)
                    out["steps"].append(step.to_json())
                    say(step_line(step))
                    if not system.pids():
                        out.setdefault("exited", {})[name] = system.log_tail(20)
                        say(f"  {name} exited during that step:\n{system.log_tail(5)}")
                    tick()
                    time.sleep(SETTLE_S)
        for name, (system, ends) in started.items():
            if plan.connections <= 0:
                break
            for kind, port in (("tls", ends.tls_port), ("wss", ends.wss_port)):
                if not system.pids():
                    out["memory"].append(IdleMemory(
                        system=name, kind=kind, connections=plan.connections,
                        error=f"{name} had exited").to_json())
                    tick()
                    continue
                if port is None:
                    out["memory"].append(IdleMemory(
                        system=name, kind=kind, connections=plan.connections,
                        error=NO_KAMAILIO_WSS).to_json())
                    tick()
                    continue
                mem = measure_idle(system, kind, port, plan.connections, pki.ca_file)
                out["memory"].append(mem.to_json())
                say(memory_line(mem))
                tick()
                time.sleep(SETTLE_S)
    except Exception as exc:  # keep what was measured
        out["error"] = f"{type(exc).__name__}: {exc}"
        say(f"tls: {out['error']}")
    finally:
        for system, _ in started.values():
            system.stop()
    return out


def step_line(s: TransportStep) -> str:
    cpu = f"{s.cpu_ms_per_call:.3f}" if s.cpu_ms_per_call is not None else "—"
    st = f"{s.stunnel_cpu_ms_per_call:.3f}" if s.stunnel_cpu_ms_per_call is not None else "—"
    verdict = "clean" if s.clean else "not clean: " + "; ".join(s.reasons)
    return (f"  {s.system:<12} {s.mode:<13} {s.offered_rate:>5.0f}/s offered  "
            f"{s.completed_rate:>6.1f}/s done  ok {s.successful_calls}  failed "
            f"{s.failed_calls}  p50/p99 {s.rtt_p50_ms}/{s.rtt_p99_ms} ms  proxy CPU {cpu} "
            f"ms/call ({s.proxy_cpu_pct:.0f}%)  stunnel {st} ms/call  other "
            f"{s.other_cpu_pct:.0f}%  UDP drops {s.proxy_udp_drops}  {verdict}")


def memory_line(m: IdleMemory) -> str:
    return (f"  {m.system:<12} {m.kind.upper():<4} {m.opened}/{m.connections} idle connections "
            f"in {m.open_s:g} s: PSS {m.pss_kb_before / 1024:.1f} -> "
            f"{m.pss_kb_after / 1024:.1f} MB = {m.pss_bytes_per_connection} B/conn, RSS "
            f"{m.rss_bytes_per_connection} B/conn, shm {m.shm_bytes_per_connection} B/conn"
            + (f"  (first failure: {m.first_failure})" if m.first_failure else ""))


# --- the report ----------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if value is None else fmt.format(value)


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def markdown(data: dict[str, Any]) -> list[str]:
    settings = data.get("settings", {})
    steps = [TransportStep.from_json(s) for s in data.get("steps", [])]
    lines = section(
        "## TLS and WebSocket",
        ["SIPp UAC → proxy → SIPp UAS (UDP) at fixed rates, "
         f"{settings.get('duration_s')} s per step, both systems up the whole part and their "
         "steps interleaved. `udp`: UDP → UDP. `tls`: the UAC over TLS through a stunnel "
         "client, one connection for every call (SIPp `-t t1`). `tls-per-call`: one TCP "
         "connection per call (`-t tn`), so one TLS connection and a full handshake per call "
         "(stunnel's session resumption off). CPU per call is the proxy's processes only; "
         "stunnel's is its own column. vs UDP: the system's CPU per call against its own UDP "
         "step at that rate."],
        data.get("error"),
        "| mode | calls/s | system | completed/s | ok / failed | p50 / p99 ms | proxy CPU "
        "ms/call | vs UDP | stunnel CPU ms/call | clean | switchboard / Kamailio CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    )
    for row in side_by_side(steps):
        first = True
        for name, entry in row["systems"].items():
            s: TransportStep = entry["step"]
            lines.append(
                f"| {row['mode'] if first else ''} | {row['offered_rate']:g} | {name} "
                f"| {s.completed_rate:.1f} | {s.successful_calls} / {s.failed_calls} "
                f"| {_num(s.rtt_p50_ms, '{:.0f}')} / {_num(s.rtt_p99_ms, '{:.0f}')} "
                f"| {_num(s.cpu_ms_per_call)} | {_times(entry['vs_udp'])} "
                f"| {_num(s.stunnel_cpu_ms_per_call)} "
                f"| {'yes' if s.clean else 'no: ' + '; '.join(s.reasons)} "
                f"| {_times(row['cpu_ratio']) if first else ''} |")
            first = False
    for name, tail in data.get("exited", {}).items():
        last = tail.strip().splitlines()[-1] if tail.strip() else ""
        lines += ["", f"**{name} exited during the part** (its later steps were not run); its "
                  f"log's last line: `{last}`"]
    lines += ["", f"Idle connections: {settings.get('connections')} per system and kind, each "
              f"with its handshake done and {settings.get('idle_probe', 'no request')}; memory "
              "of all the proxy's processes before and after (PSS splits shared pages between "
              "processes; Kamailio's shm is its shared-memory allocator's `real_used`).", "",
              "| system | kind | opened / asked | open s | PSS MB before → after | PSS B/conn "
              "| RSS B/conn | shm B/conn |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in (IdleMemory.from_json(x) for x in data.get("memory", [])):
        if m.error:
            lines.append(f"| {m.system} | {m.kind.upper()} | — | — | {m.error} | | | |")
            continue
        lines.append(
            f"| {m.system} | {m.kind.upper()} | {m.opened} / {m.connections} | {m.open_s:g} "
            f"| {m.pss_kb_before / 1024:.1f} → {m.pss_kb_after / 1024:.1f} "
            f"| {_num(m.pss_bytes_per_connection, '{:,.0f}')} "
            f"| {_num(m.rss_bytes_per_connection, '{:,.0f}')} "
            f"| {_num(m.shm_bytes_per_connection, '{:,.0f}')} |")
    return [*lines, ""]


# --- python -m bench.tls -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.tls",
        description="SIP over TLS and WSS, switchboard side by side with Kamailio: calls/s "
                    "and CPU per call (UDP, TLS persistent, TLS one handshake per call), "
                    "memory per idle TLS and WSS connection.")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), metavar="R,R",
                   help="offered calls/s (default %(default)s)")
    p.add_argument("--duration", type=float, default=DURATION_S, metavar="S",
                   help="seconds per step (default %(default)s)")
    p.add_argument("--modes", default=",".join(MODES), help="default %(default)s")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="default %(default)s")
    p.add_argument("--connections", type=int, default=CONNECTIONS, metavar="N",
                   help="idle connections per system and kind (default %(default)s; 0: skip)")
    p.add_argument("--no-kamailio-websocket", action="store_true",
                   help="do not load Kamailio's xhttp and websocket modules (its WSS "
                        "connections are then not measured)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--keep-raw", action="store_true")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install kamailio and its tls/websocket modules")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown} (known: {', '.join(MODES)})")
    return Plan(rates=tuple(float(r) for r in args.rates.split(",") if r.strip()),
                duration=args.duration, modes=modes,
                systems=tuple(n.strip() for n in args.systems.split(",") if n.strip()),
                connections=args.connections,
                kamailio_websocket=not args.no_kamailio_websocket)


def ensure_tools(plan: Plan, install: bool, say: Say) -> None:
    if stunnel_binary() is None:
        raise SystemExit("stunnel is needed: apt-get install -y stunnel4")
    if "kamailio" in plan.systems and install:
        modules = ["tls.so", *(["websocket.so"] if plan.kamailio_websocket else [])]
        systems.ensure_kamailio(say, modules=modules)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    binary = find_sipp()
    if binary is None:
        raise SystemExit("SIPp is needed: apt-get install -y sip-tester")
    ensure_tools(plan, not args.no_install, print)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = (args.out / f"{stamp}-tls-raw" if args.keep_raw
           else Path(tempfile.mkdtemp(prefix="bench-tls-")))
    print(f"bench tls: about {plan.estimate_seconds() / 60:.1f} min", file=sys.stderr)
    try:
        data = run(plan, raw, sipp_binary=binary,
                   say=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        if not args.keep_raw:
            shutil.rmtree(raw, ignore_errors=True)
    import switchboard

    data["host"] = {"switchboard_core": switchboard.BUILD, "sipp": sipp.sipp_version(binary)}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stamp}-tls.json"
    md_path = args.out / f"{stamp}-tls.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text("\n".join(markdown(data)))
    print("\n".join(markdown(data)))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
