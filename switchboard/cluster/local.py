"""The `local` runtime: one worker, its sockets, the event bus and the MI in this process.

`serve(config)` binds everything and returns a started `LocalSwitchboard`, which is also the
in-process Python API: its methods are the management operations (`ControlApi`).

Operations wiring: the worker hands every event of the core to `metrics.CallMetrics`, which
counts transfer/hold outcomes and call-setup time, and makes into published events only those
the event bus has a taker for (`EventBus.follow_wanted`); the MI server also serves
`/metrics`, `/livez` and `/readyz`; with a HEP collector configured, the endpoints and the
receiver are wrapped to mirror every SIP message (without one, the hot path is exactly as
before). The listeners call the worker's `receive` directly, with nothing in between.

With a `[dialog] store`, confirmed dialogs are written there behind the hot path
(`store.DialogKeeper`) and read back at start, before the first message is served; a route
secret left empty is generated once and kept in the store. A store that does not answer at
start (Redis down) does not keep the node from serving: it starts in memory only and the
keeper reads and writes the store once it answers. `drain` (SIGTERM, MI `kill`)
turns `/readyz` unready, answers new INVITEs 503 and waits for the transactions in flight
before `stop` writes the store a last time.

`build_worker` (and `proxy_config`) do that wiring for one worker from the configuration; the
`ray` runtime builds each of its workers with them too, so both runtimes run the same thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..actors.eventbus import EventBus, webhook_settings
from ..actors.listing import DialogFilter
from ..actors.worker import Worker
from ..api import CallOperations, CommandError, EventObserver, Unwatch, command_error
from ..capture import CaptureSwitch, Tap
from ..config import Config, ListenSocket
from ..hep import HepMirror, MirroredEndpoint, mirrored_receiver
from ..metrics import CallMetrics, Metrics
from ..mi.http import MIServer, start_mi_server
from ..script import install_script, load_script
from ..sip.callops import CallOps
from ..sip.guard import GuardSettings
from ..sip.operations import Operation, Refused
from ..sip.proxy import Proxy, ProxyConfig
from ..sip.transaction import State
from ..sip.wire import Address
from ..store import DialogKeeper, StoreAtStart, open_at_start
from ..tokens import RandomTokens
from ..transport.base import Endpoint, Receiver
from ..transport.tcp import TcpEndpoint
from ..transport.tls import TlsContexts, TlsFiles
from ..transport.udp import UdpEndpoint
from ..transport.ws import Flows, WsEndpoint

log = logging.getLogger(__name__)

# The garbage collector runs on a clock, not on allocation counts: `actors/overload.py`
# collects the youngest generation every 50 ms and the rest when the worker is idle.
# Python's own trigger counts allocations minus deallocations, so in a steady state — calls
# ending as fast as new ones start — it hardly fires, and when it does the youngest
# generation holds every object made since the last time: a pause of hundreds of
# milliseconds at 1,500 calls/s. On a clock it holds 50 ms of calls (1-2 ms to walk). The
# call path makes no reference cycles (transactions, timers and contexts let go of each
# other when they end; `tests/unit/sip/test_no_cycles.py`): reference counting frees calls,
# the collector only catches rare cycles elsewhere.


# Transaction states still waiting for a final answer (the rest only absorb retransmissions).
_PENDING = (State.CALLING, State.TRYING, State.PROCEEDING)
DRAIN_POLL = 0.05  # seconds between two looks at the transactions in flight while draining


def transactions_in_flight(proxy: Proxy) -> int:
    """Server and client transactions of `proxy` that have no final answer yet."""
    return (sum(1 for t in proxy.server_txns.values() if t.state in _PENDING)
            + sum(1 for t in proxy.client_txns.values() if t.state in _PENDING))


# -- building a worker (every runtime's) ----------------------------------------------------


def proxy_config(config: Config, listeners: tuple[Address, ...], worker_id: int = 0
                 ) -> ProxyConfig:
    """The proxy core's settings from the configuration: the one place both runtimes (this
    one and every worker of the `ray` one) take them from."""
    return ProxyConfig(
        listeners=listeners,
        domains=config.proxy.domains,
        record_route=config.proxy.record_route,
        trusted=config.proxy.trusted,
        rate_limit=float(config.limits.rate),
        rate_burst=float(max(config.limits.burst, 1)),
        auth_realm=config.auth.realm,
        auth_users=config.auth.users,
        auth_invites=config.auth.invites,
        auth_methods=config.auth.methods,
        auth_algorithms=config.auth.algorithms,
        auth_nonce_ttl=float(config.auth.nonce_ttl),
        auth_guard=GuardSettings(
            max_failures=config.auth.max_failures,
            user_max_failures=config.auth.user_max_failures,
            window=float(config.auth.failure_window),
            ban_time=float(config.auth.ban_time)),
        route_secret=config.proxy.route_secret,
        dialog_lifetime=float(config.dialog.lifetime),
        worker_id=worker_id,
        callops_mode=config.callops.mode,
        match_param=config.callops.match_param,
        end_old_call=config.transfer.end_old_call,
    )


Listener = UdpEndpoint | TcpEndpoint | WsEndpoint


def _not_started(data: bytes, source: Address, local: Address) -> None:
    """What a listener bound before its worker exists does with a message: drops it (a
    request is sent again; no answer can have been asked of a node not yet serving)."""
    log.debug("dropped a message from %s to %s: the worker is not started", source, local)


@dataclass(slots=True)
class BuiltWorker:
    """A started worker and what was wired around it (call metrics, the HEP mirror, the TLS
    contexts of its listeners, the listeners themselves)."""

    worker: Worker
    call_metrics: CallMetrics
    hep: HepMirror | None
    tls: TlsContexts | None = None
    listeners: tuple[Listener, ...] = ()

    def connect(self) -> None:
        """Point every listener at the worker's `receive` itself (through the HEP mirror when
        there is one): no Python call in between, once per message."""
        receive = self.worker.receive
        receiver = receive if self.hep is None else mirrored_receiver(receive, self.hep)
        for listener in self.listeners:
            listener.receiver = receiver

    def tap(self, tap: Tap | None) -> None:
        """`Worker.tap`: the listeners keep calling `Worker.receive`, which copies to the tap."""
        self.worker.tap(tap)

    def reload_certificates(self) -> bool:
        """Read the `[tls]` files again (SIGHUP); connections and calls stay up."""
        return self.tls.reload() if self.tls is not None else True

    def statistics(self) -> dict[str, int]:
        """The core's statistics, the outcome counters and the HEP counters."""
        stats = self.worker.proxy.statistics()
        stats.update(self.call_metrics.statistics())
        if self.hep is not None:
            stats["hep:sent_packets"] = self.hep.sent
            stats["hep:dropped_packets"] = self.hep.dropped
        return stats

    def close(self) -> None:
        self.worker.close()
        if self.hep is not None:
            self.hep.close()


async def build_worker(
    config: Config,
    publish: Callable[[str, dict[str, Any]], None],
    *,
    sockets: Sequence[ListenSocket] | None = None,
    worker_id: int = 0,
    reuse_port: bool = False,
) -> BuiltWorker:
    """Bind `sockets` (default: the configured ones) in the running loop and start a worker
    on them, its events going to `publish` (counted by `CallMetrics` on the way), with HEP
    capture when a collector is configured; `reuse_port` binds every listening socket (UDP,
    TCP, TLS, WebSocket) so that the other workers of the node can bind the same addresses.
    Raises OSError when a socket cannot be bound, ScriptError for a routing script that does
    not load; nothing stays open then."""
    endpoints: list[Listener] = []
    hep: HepMirror | None = None
    tls: TlsContexts | None = None

    try:
        if config.hep.collector is not None:
            hep = await HepMirror.connect(
                config.hep.collector.host, config.hep.collector.port,
                capture_id=config.hep.capture_id,
            )
        wanted = config.listen.sockets if sockets is None else sockets
        if any(sock.transport in ("tls", "wss") for sock in wanted):
            tls = tls_contexts(config)
        flows = Flows()
        # The worker needs the bound addresses (port 0 picks one): the listeners are
        # pointed at it once it exists (`BuiltWorker.connect`, below, with no await since).
        for sock in wanted:
            endpoints.append(await bind_listener(config, sock, _not_started, tls, flows,
                                                 reuse_port=reuse_port))
        proxy = Proxy(
            proxy_config(config, tuple(e.local for e in endpoints), worker_id),
            RandomTokens(),
            first_seq=int.from_bytes(os.urandom(3), "big") << 4,
        )
        # The certificate of a TLS server we connect to must name the host we meant: the
        # name the static hosts table gives its address, else the address itself.
        server_names = {address: name for name, address in proxy.config.hosts}
        proxy.addressing.connection_transport = flows.transport_of
        for endpoint in endpoints:
            if isinstance(endpoint, TcpEndpoint):
                endpoint.server_names = server_names
        callops = CallOps(proxy)
        if config.script.path:
            install_script(proxy, callops, load_script(config.script.path))
    except BaseException:
        for endpoint in endpoints:
            endpoint.close()
        if hep is not None:
            hep.close()
        raise

    def start_time_of(dialog_id: str) -> float | None:
        dialog = proxy.dialogs.by_id(dialog_id)
        return dialog.start_time if dialog is not None else None

    # The core's clock is the loop's (Worker.now).
    call_metrics = CallMetrics(start_time_of, asyncio.get_running_loop().time)
    worker = Worker(proxy, callops, publish, count=call_metrics.count)
    for endpoint in endpoints:
        sender: Endpoint = endpoint
        if hep is not None:
            sender = MirroredEndpoint(endpoint, hep)
        worker.add_endpoint(sender)
    # What exists now lives as long as the process: keep the collector from scanning it
    # again and again; from here on it runs on the worker's clock (see the top).
    gc.collect()
    gc.freeze()
    gc.disable()
    built = BuiltWorker(worker, call_metrics, hep, tls, tuple(endpoints))
    built.connect()
    return built


def tls_contexts(config: Config) -> TlsContexts:
    """The TLS contexts of a worker whose listeners include tls or wss; raises
    `CertificateError` (an OSError) when the `[tls]` files are missing or do not load."""
    t = config.tls
    return TlsContexts(TlsFiles(t.certificate, t.private_key, t.ca_file, t.verify_peer,
                                t.require_client_certificate), server=True)


async def bind_listener(config: Config, sock: ListenSocket, receiver: Receiver,
                        tls: TlsContexts | None, flows: Flows, *, reuse_port: bool = False
                        ) -> UdpEndpoint | TcpEndpoint | WsEndpoint:
    """Bind one SIP listener. The WebSocket ones of a worker share `flows` (the table that
    finds a WebSocket client's connection by its name)."""
    limits = config.limits
    if sock.transport == "udp":
        return await UdpEndpoint.bind(sock.host, sock.port, receiver, reuse_port=reuse_port)
    if sock.transport in ("ws", "wss"):
        ws = config.websocket
        return await WsEndpoint.bind(
            sock.transport, sock.host, sock.port, receiver,
            server_ssl=tls.server if tls is not None and sock.transport == "wss" else None,
            max_per_source=limits.tcp_connections_per_source,
            idle_timeout=float(limits.tcp_idle_timeout),
            ping_interval=float(ws.ping_interval), max_message_size=ws.max_message_size,
            handshake_timeout=float(ws.handshake_timeout), flows=flows, reuse_port=reuse_port)
    options: dict[str, Any] = {}
    if sock.transport == "tls":
        assert tls is not None
        options = {"server_ssl": tls.server, "client_ssl": tls.client,
                   "handshake_timeout": float(config.tls.handshake_timeout)}
    return await TcpEndpoint.bind(
        sock.host, sock.port, receiver, max_per_source=limits.tcp_connections_per_source,
        idle_timeout=float(limits.tcp_idle_timeout), reuse_port=reuse_port, **options)


class LocalSwitchboard(CallOperations):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker: Worker | None = None
        self.events: EventBus | None = None
        self.mi: MIServer | None = None
        self.hep: HepMirror | None = None
        self.call_metrics: CallMetrics | None = None
        self._built: BuiltWorker | None = None
        self.keeper: DialogKeeper | None = None
        self._capture: CaptureSwitch | None = None
        self._ready = False
        self._draining = False
        # Set by `request_shutdown` (MI `kill`): whoever runs this node drains and stops it.
        self.shutdown_requested = asyncio.Event()
        self._sighup = False
        self._started_wall = time.time()
        self._started_mono = time.monotonic()

    @property
    def listeners(self) -> list[Address]:
        return list(self.worker.endpoints) if self.worker else []

    async def start(self) -> None:
        cfg = self.config
        self.events = EventBus(webhook=webhook_settings(cfg.events))
        for sub in cfg.events.static_subscriptions():
            await self.events.subscribe(sub.event, sub.socket, None)
        opened: StoreAtStart | None = None
        if cfg.dialog.store:
            opened = await open_at_start(cfg.dialog.store,
                                         route_secret=not cfg.proxy.route_secret)
            if opened.route_secret:
                cfg = dataclasses.replace(cfg, proxy=dataclasses.replace(
                    cfg.proxy, route_secret=opened.route_secret))
        try:
            built = await build_worker(cfg, self.events.publish)
        except BaseException:
            if opened is not None:
                opened.store.close()
            raise
        if opened is not None:
            # No await from build_worker's last bind to here: nothing was served before the
            # stored dialogs are back.
            self.keeper = DialogKeeper(opened.store, built.worker,
                                       cfg.dialog.store_interval_ms / 1000,
                                       route_secret=opened.route_secret)
            if opened.unavailable:
                self.keeper.wait_for_store()
            else:
                restored = self.keeper.restore(opened.stored)
                log.info("dialog store %s: %d of %d stored dialogs restored",
                         cfg.dialog.store, restored, len(opened.stored),
                         extra={"event": "dialogs_restored"})
            self.keeper.start()
        self.worker, self.hep, self.call_metrics = built.worker, built.hep, built.call_metrics
        worker = built.worker

        def wanted_changed(events: frozenset[str]) -> None:
            worker.wanted = events

        self.events.follow_wanted(wanted_changed)
        self._built = built
        if built.tls is not None:
            self._watch_sighup(built)
        call_metrics = built.call_metrics
        if cfg.mi.http is not None:
            metrics = Metrics(self.statistics, lambda: call_metrics.setup, runtime="local")
            self.mi = await start_mi_server(
                self, cfg.mi.http.host, cfg.mi.http.port, token=cfg.mi.token or None,
                metrics=metrics.exposition, ready=self.readiness,
            )
        self._ready = True

    def reload_certificates(self) -> bool:
        """Read the `[tls]` files again, as SIGHUP does; False when they did not load (the
        old ones stay in use)."""
        return self._built.reload_certificates() if self._built is not None else True

    def _watch_sighup(self, built: BuiltWorker) -> None:
        """SIGHUP reads the certificates again (only where this loop may own signals: the
        main thread of `switchboard serve`)."""
        try:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, built.reload_certificates)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            log.debug("no SIGHUP certificate reload here: %s", exc)
            return
        self._sighup = True

    def request_shutdown(self) -> None:
        """Ask whoever runs this node to drain and stop it (MI `kill`); unready at once."""
        self._ready = False
        self.shutdown_requested.set()

    async def drain(self, timeout: float | None = None) -> int:
        """Stop taking new calls (`/readyz` unready, new INVITEs answered 503 with
        Retry-After) and wait up to `timeout` seconds (default `[runtime] drain_timeout`)
        for the transactions in flight to be answered; in-dialog requests keep flowing.
        Answers how many were still in flight at the end. `stop` follows."""
        self._ready = False
        self._draining = True
        worker = self.worker
        if worker is None:
            return 0
        worker.proxy.draining = True
        loop = asyncio.get_running_loop()
        limit = float(self.config.runtime.drain_timeout if timeout is None else timeout)
        deadline = loop.time() + limit
        left = transactions_in_flight(worker.proxy)
        log.debug("draining: new INVITEs refused, %d transactions in flight", left)
        while left and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
            left = transactions_in_flight(worker.proxy)
        if left:
            log.warning("drained for %.0f s: %d transactions still in flight are dropped",
                        limit, left)
        return left

    async def stop(self) -> None:
        self._ready = False
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self.mi is not None:
            await self.mi.close()
        if self.keeper is not None:
            # The last changes, before the sockets close (nothing changes after this).
            try:
                await self.keeper.close()
            except Exception:
                log.exception("dialog store: the last write failed")
            self.keeper = None
        if self.worker is not None:
            self.worker.close()
        if self.hep is not None:
            self.hep.close()
        if self.events is not None:
            await self.events.close()

    async def readiness(self) -> list[str]:
        """What keeps this node from taking calls; empty when it is ready (`/readyz`)."""
        if not self._ready or self.worker is None:
            return ["starting" if self.worker is None else
                    "draining" if self._draining or self.shutdown_requested.is_set()
                    else "stopping"]
        bound = len(self.worker.endpoints)
        wanted = len(self.config.listen.sockets)
        if bound < wanted:
            return [f"{bound} of {wanted} SIP sockets bound"]
        return []

    # -- ControlApi -----------------------------------------------------------------------

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        assert self.worker is not None
        return await self.worker.list_dialogs(callid, from_tag)

    async def list_page(self, after: int | None, limit: int, state: int | None = None,
                        from_user: str | None = None, to_user: str | None = None
                        ) -> tuple[list[dict[str, Any]], int | None]:
        assert self.worker is not None
        return await self.worker.list_page(after, limit,
                                           DialogFilter(state, from_user, to_user))

    async def operate(self, op: Operation) -> None:
        assert self.worker is not None
        try:
            await self.worker.operate(op)
        except Refused as exc:
            raise command_error(exc) from None

    async def statistics(self) -> dict[str, int]:
        assert self._built is not None
        stats = self._built.statistics()
        if self.keeper is not None:
            stats.update(self.keeper.statistics())
        if self.events is not None:
            stats.update(self.events.statistics())
        return dict(sorted(stats.items()))

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        assert self.events is not None
        try:
            await self.events.subscribe(event, socket, expire)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        """On the event bus: the observer is called from its task."""
        assert self.events is not None
        try:
            stop = self.events.watch(events, observer)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None

        async def unwatch() -> None:
            stop()

        return unwatch

    def capture(self) -> CaptureSwitch | None:
        if self._built is None:
            return None
        if self._capture is None:
            self._capture = CaptureSwitch(self._built)
        return self._capture

    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started_mono

    def started_at(self) -> float:
        return self._started_wall


async def serve(config: Config) -> LocalSwitchboard:
    """Start switchboard in this process with `config`; returns the running instance."""
    sb = LocalSwitchboard(config)
    try:
        await sb.start()
    except BaseException:
        await sb.stop()
        raise
    return sb
