"""The `ray` runtime: switchboard as a named, detached controller actor and N worker actors.

`serve(config)` starts Ray (or joins the cluster at `runtime.ray_address`) and creates the
`Controller` actor ("controller" in namespace "switchboard", detached, restarted by Ray), which
places the `WorkerActor`s. Worker `i` runs the same `Worker` + `Proxy` + endpoints as the local
runtime, in its own actor's event loop, bound to every configured listen socket at port + i,
with `worker_id=i` (dialog ids start `<i hex>.`). It record-routes itself, so a dialog's SIP
traffic never crosses actors (DESIGN.md §1.1, §1.4).

The controller is the control plane: the directory (Call-ID → worker, fed by the workers'
E_DLG_STATE_CHANGED events; a dialog id names its worker), the routing of operations by
Call-ID or dialog id, the fan-out and merge of `dialog:list` and statistics, and the event bus.
Workers send every event to the controller in msgpack batches (one actor call in flight per
worker: under load a batch carries whatever came meanwhile); the controller's `EventBus`
delivers them to the subscribers, exactly as in one process. Its methods are the Python API
(DESIGN.md §3): `ray.get_actor("controller", namespace="switchboard")`.

What `serve` returns lives in the driver: it implements `ControlApi` by calling the
controller and runs the MI HTTP server, so `switchboard mi` works as with the local runtime.
Payloads between actors are msgpack; what the controller answers its callers (lists, dicts,
`CommandError`) is the public API and travels the way Ray carries any return value.

Only this module imports `ray` (DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import math
import os
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]  # no stubs, no py.typed
import ray
import ray.exceptions
import ray.util

from ..actors.dialog import DialogMessage, Hold, Transfer
from ..actors.eventbus import DEFAULT_EXPIRE, EventBus
from ..actors.worker import Worker
from ..api import INVALID_PARAMS, SERVER_ERROR, CommandError
from ..config import Config
from ..events import E_DLG_STATE_CHANGED, KNOWN_EVENTS
from ..events.sinks import parse_sink
from ..mi.http import MIServer, start_mi_server
from ..script import ScriptError, load_script
from ..sip.callops import CallOpsError
from ..sip.dialog import worker_of
from ..sip.proxy import Proxy, ProxyConfig
from ..sip.wire import Address
from ..transport.tcp import TcpEndpoint
from ..transport.udp import UdpEndpoint
from .local import GC_THRESHOLDS, parse_extra_headers

log = logging.getLogger(__name__)

NAMESPACE: Final = "switchboard"
CONTROLLER: Final = "controller"

# How long placing and starting the workers may take before `serve` gives up (a cluster
# without the CPUs asked for would otherwise wait forever).
START_TIMEOUT: Final = 60.0
# A restarted actor may find its ports still held by the process it replaces for a moment.
REBIND_TIMEOUT: Final = 10.0
# Events a worker keeps while the controller is slow or away; more are dropped and counted.
MAX_PENDING_EVENTS: Final = 100_000
# How long a management call waits for a worker.
CALL_TIMEOUT: Final = 30.0


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _token() -> str:
    return secrets.token_hex(4)


# -- what the driver tells the actors (msgpack) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs of the configuration. `listen` holds (transport, host, base port)."""

    listen: tuple[tuple[str, str, int], ...]
    domains: tuple[str, ...] = ()
    record_route: bool = True
    dialog_lifetime: float = 43200.0
    callops_mode: str = "param"
    match_param: str = "osid"
    end_old_call: bool = True
    script: str = ""

    def sockets(self, index: int) -> list[tuple[str, str, int]]:
        """Worker `index` listens on each base port + index (port 0 stays 0: a free port)."""
        return [(t, h, p + index if p else 0) for t, h, p in self.listen]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    workers: int  # 0 = one per CPU of the cluster
    subscriptions: tuple[tuple[str, str], ...]  # static (event, socket) pairs
    worker: WorkerSpec

    @classmethod
    def from_config(cls, config: Config) -> ServiceSpec:
        return cls(
            workers=config.runtime.workers,
            subscriptions=tuple((s.event, s.socket) for s in config.events.static_subscriptions()),
            worker=WorkerSpec(
                listen=tuple((s.transport, s.host, s.port) for s in config.listen.sockets),
                domains=config.proxy.domains,
                record_route=config.proxy.record_route,
                dialog_lifetime=float(config.dialog.lifetime),
                callops_mode=config.callops.mode,
                match_param=config.callops.match_param,
                end_old_call=config.transfer.end_old_call,
                script=config.script.path,
            ),
        )

    def pack(self) -> bytes:
        return _pack(dataclasses.asdict(self))

    @classmethod
    def unpack(cls, data: bytes) -> ServiceSpec:
        raw = _unpack(data)
        worker = raw["worker"]
        return cls(
            workers=int(raw["workers"]),
            subscriptions=tuple((str(e), str(s)) for e, s in raw["subscriptions"]),
            worker=WorkerSpec(
                listen=tuple((str(t), str(h), int(p)) for t, h, p in worker["listen"]),
                domains=tuple(worker["domains"]),
                record_route=bool(worker["record_route"]),
                dialog_lifetime=float(worker["dialog_lifetime"]),
                callops_mode=str(worker["callops_mode"]),
                match_param=str(worker["match_param"]),
                end_old_call=bool(worker["end_old_call"]),
                script=str(worker["script"]),
            ),
        )


def _start_error(exc: BaseException) -> dict[str, Any]:
    kind = "os" if isinstance(exc, OSError) else "script" if isinstance(exc, ScriptError) else ""
    # The cause often holds the useful part ("[Errno 98] Address already in use").
    parts: list[str] = [] if kind else [type(exc).__name__]
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        text = str(current)
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return {"error": {"kind": kind, "message": ": ".join(parts)}}


def _raise_start_error(error: dict[str, Any]) -> None:
    message = str(error.get("message", "unknown error"))
    kind = error.get("kind")
    if kind == "os":
        raise OSError(message)
    if kind == "script":
        raise ScriptError(message)
    raise RuntimeError(message)


def _restarted() -> bool:
    """Whether Ray restarted the actor this runs in (it re-runs `__init__` with the same
    arguments)."""
    with warnings.catch_warnings():
        # The property reads Ray's own deprecated `actor_id`; the warning is not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _node_ip() -> str:
    """The address this node joined the cluster with (`ray start --node-ip-address`)."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
            return str(node["NodeManagerAddress"])
    return str(ray.util.get_node_ip_address())


# -- the worker actor -----------------------------------------------------------------------


def _operation(op: dict[str, Any]) -> DialogMessage:
    kind = op.get("op")
    if kind == "transfer":
        return Transfer(
            leg=op["leg"], destination=op.get("destination"),
            transfer_callid=op.get("transfer_callid"), transfer_leg=op.get("transfer_leg"),
            transfer_fromtag=op.get("transfer_fromtag"), transfer_totag=op.get("transfer_totag"))
    headers = op.get("headers")
    return Hold(hold=kind == "hold", leg=op.get("leg"),
                headers=list(headers) if isinstance(headers, list | tuple) else headers)


class WorkerActor:
    """One worker: its SIP sockets, its proxy core and its dialogs, in this actor's loop.

    Ray runs an async actor's `__init__` inside the actor's event loop, so binding starts
    there; a restarted actor (Ray re-runs `__init__`) comes back on the same ports, with no
    dialogs (state replication is not done yet).
    """

    def __init__(self, index: int, spec: bytes, controller: Any, rebind: bool = False) -> None:
        self.index = index
        self.spec = ServiceSpec.unpack(spec).worker
        self.controller = controller
        self.restarted = _restarted()
        self.rebind = rebind or self.restarted
        self.worker: Worker | None = None
        self.dropped = 0
        self._outbox: list[tuple[str, dict[str, Any]]] = []
        self._sending = False
        self._starting: asyncio.Future[Worker] | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: start on the first call
            self._starting = asyncio.ensure_future(self._start())

    async def _started(self) -> Worker:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> Worker:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (REBIND_TIMEOUT if self.rebind else 0.0)
        while True:
            try:
                worker = await self._bind()
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.2)
        if self.restarted:
            log.warning("worker %d restarted by Ray: its dialogs before the restart are lost",
                        self.index)
            with contextlib.suppress(Exception):
                await self.controller.worker_restarted.remote(self.index, self._describe(worker))
        return worker

    def _describe(self, worker: Worker) -> bytes:
        return _pack({
            "index": self.index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": _node_ip(),
            "pid": os.getpid(),
            "listeners": [[a.transport, a.host, a.port] for a in worker.endpoints],
        })

    async def _bind(self) -> Worker:
        spec = self.spec
        endpoints: list[UdpEndpoint | TcpEndpoint] = []
        box: list[Worker] = []

        def receive(data: bytes, source: Address, local: Address) -> None:
            box[0].receive(data, source, local)

        try:
            for transport, host, port in spec.sockets(self.index):
                if host in ("0.0.0.0", "::"):
                    # Via and Record-Route need an address peers can reach: this node's.
                    host = _node_ip()
                cls = UdpEndpoint if transport == "udp" else TcpEndpoint
                endpoints.append(await cls.bind(host, port, receive))
            proxy = Proxy(
                ProxyConfig(
                    listeners=tuple(e.local for e in endpoints),
                    domains=spec.domains,
                    record_route=spec.record_route,
                    dialog_lifetime=spec.dialog_lifetime,
                    worker_id=self.index,
                    callops_mode=spec.callops_mode,
                    match_param=spec.match_param,
                    end_old_call=spec.end_old_call,
                ),
                _token,
                first_seq=int.from_bytes(os.urandom(3), "big") << 4,
            )
            if spec.script:
                proxy.request_hook = load_script(spec.script)
        except BaseException:
            for endpoint in endpoints:
                endpoint.close()
            raise
        worker = Worker(proxy, self._publish)
        box.append(worker)
        for endpoint in endpoints:
            worker.add_endpoint(endpoint)
        self.worker = worker
        # As the local runtime does: what exists now lives as long as the process.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        return worker

    # -- events toward the controller ------------------------------------------------------

    def _publish(self, event: str, params: dict[str, Any]) -> None:
        if len(self._outbox) >= MAX_PENDING_EVENTS:
            self.dropped += 1
            return
        self._outbox.append((event, dict(params)))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_events())

    async def _send_events(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    await self.controller.publish.remote(self.index, _pack(batch))
                except Exception as exc:  # the controller is restarting or gone
                    self.dropped += len(batch)
                    log.warning("worker %d: %d events lost: %s", self.index, len(batch), exc)
        finally:
            self._sending = False

    # -- what the controller asks ------------------------------------------------------------

    async def ready(self) -> bytes:
        """Start (if not yet) and describe this worker; an `error` entry when it cannot."""
        try:
            worker = await self._started()
        except Exception as exc:
            return _pack(_start_error(exc))
        return self._describe(worker)

    async def find(self, key: str) -> bool:
        """Whether a live dialog has this dialog id or Call-ID here."""
        worker = await self._started()
        return worker.find_dialog(key) is not None

    async def list_dialogs(self, callid: str | None, from_tag: str | None) -> bytes:
        worker = await self._started()
        return _pack(worker.list_dialogs(callid, from_tag))

    async def end_dialog(self, key: str, extra_headers: bytes) -> bool:
        worker = await self._started()
        return worker.end_dialog(key, [(str(n), str(v)) for n, v in _unpack(extra_headers)])

    async def operate(self, callid: str, op: bytes) -> bytes:
        """Run a call operation; `{"missing": true}` when the call is not here."""
        worker = await self._started()
        dialog = worker.proxy.dialogs.by_call_id(callid)
        if dialog is None or not dialog.active:
            return _pack({"missing": True})
        try:
            worker.operate(callid, _operation(_unpack(op)))
        except CallOpsError as exc:
            return _pack({"error": [exc.code, exc.message, exc.data]})
        return _pack({"ok": True})

    async def statistics(self) -> bytes:
        worker = await self._started()
        stats = worker.proxy.statistics()
        stats["evi:dropped_events"] = self.dropped
        return _pack(stats)

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


# -- the controller actor -------------------------------------------------------------------


def _check_str(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise CommandError.invalid_params(f"{name}: expected a string")


class Controller:
    """The control plane of a switchboard on Ray; its public methods are the Python API.

    Operations take the same parameters and raise the same `CommandError`s as the management
    commands of the same name (`callops:transfer` is `call_transfer`, `dialog:list` is
    `list_dialogs`, `dialog:end_dlg` is `end_dialog`, `evi:subscribe` is `subscribe`).
    """

    def __init__(self, spec: bytes) -> None:
        self.spec = ServiceSpec.unpack(spec)
        self.events = EventBus()
        self.workers: list[Any] = []
        self.info: list[dict[str, Any]] = []
        # Call-ID -> index of the worker that owns the dialog, from E_DLG_STATE_CHANGED.
        self.directory: dict[str, int] = {}
        self.started_wall = time.time()
        self._error: dict[str, Any] | None = None
        self._starting: asyncio.Future[None] | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: start on the first call
            self._starting = asyncio.ensure_future(self._start())

    async def _started(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        if self._error is not None:
            raise CommandError(SERVER_ERROR, "Server error",
                               f"switchboard did not start: {self._error['message']}")

    async def _start(self) -> None:
        try:
            await asyncio.wait_for(self._place_workers(), START_TIMEOUT)
        except TimeoutError:
            self._error = {"kind": "", "message": (
                f"the workers were not placed and started within {START_TIMEOUT:g} s "
                f"(does the cluster have the CPUs for {len(self.workers)} workers?)")}
        except Exception as exc:
            log.exception("switchboard controller: start failed")
            self._error = _start_error(exc)["error"]
        if self._error is not None:
            await self._kill_workers()

    async def _place_workers(self) -> None:
        for event, socket in self.spec.subscriptions:
            await self.events.subscribe(event, socket, None)
        context = ray.get_runtime_context()
        me = context.current_actor
        rebind = _restarted()
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.spec.workers or max(1, int(cpus))
        # One CPU each while they fit, an even share when more workers than CPUs are asked
        # for (rounded down: Ray counts resources in units of 1/10000).
        share = 1.0 if count <= cpus else math.floor(cpus / count * 10_000) / 10_000
        spec = self.spec.pack()
        remote_worker: Any = ray.remote(WorkerActor)
        for index in range(count):
            self.workers.append(remote_worker.options(
                max_restarts=-1,
                num_cpus=share,
                scheduling_strategy="SPREAD",
            ).remote(index, spec, me, rebind))
        replies = await asyncio.gather(*(w.ready.remote() for w in self.workers))
        info = [_unpack(r) for r in replies]
        for index, reply in enumerate(info):
            if "error" in reply:
                error = reply["error"]
                self._error = {**error, "message": f"worker {index}: {error['message']}"}
                return
        self.info = info

    async def _kill_workers(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(worker)
        self.workers = []

    # -- driver and workers ------------------------------------------------------------------

    async def ready(self) -> bytes:
        """Wait until started: `{"workers": [...], "started_at": t}` or `{"error": {...}}`."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        if self._error is not None:
            return _pack({"error": self._error})
        return _pack({"workers": self.info, "started_at": self.started_wall})

    def workers_info(self) -> list[dict[str, Any]]:
        """Each worker: index, node id and IP, pid, listeners ([transport, host, port])."""
        return list(self.info)

    def worker_handles(self) -> list[Any]:
        """The worker actors' handles, by index (for tests and tools)."""
        return list(self.workers)

    def started_at(self) -> float:
        return self.started_wall

    async def publish(self, index: int, batch: bytes) -> None:
        """A worker's events, in the order it raised them (msgpack list of [event, params])."""
        directory = self.directory
        for event, params in _unpack(batch):
            if event == E_DLG_STATE_CHANGED:
                callid = params.get("callid")
                if params.get("new_state") == 5:
                    if directory.get(callid) == index:
                        del directory[callid]
                else:
                    directory[callid] = index
            self.events.publish(event, params)

    async def worker_restarted(self, index: int, info: bytes) -> None:
        """Ray restarted worker `index` and it listens again: forget what it owned."""
        for callid in [c for c, owner in self.directory.items() if owner == index]:
            del self.directory[callid]
        if 0 <= index < len(self.info):
            self.info[index] = _unpack(info)

    async def stop(self) -> None:
        """Close every worker's sockets and the event sinks; the actors stay until killed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(w.stop.remote() for w in self.workers), return_exceptions=True),
                5.0,
            )
        await self._kill_workers()
        await self.events.close()

    # -- routing -----------------------------------------------------------------------------

    async def _ask(self, index: int, call: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            return await asyncio.wait_for(call(self.workers[index]), CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, TimeoutError) as exc:
            raise CommandError(SERVER_ERROR, "Server error",
                               f"worker {index} is not available") from exc

    async def _fan_out(self, call: Callable[[Any], Awaitable[Any]]) -> list[Any]:
        """Ask every worker; one that is down (restarting) is left out, with a warning."""
        replies = await asyncio.gather(
            *(asyncio.wait_for(call(w), CALL_TIMEOUT) for w in self.workers),
            return_exceptions=True)
        out = []
        for index, reply in enumerate(replies):
            if isinstance(reply, ray.exceptions.RayActorError | TimeoutError):
                log.warning("worker %d did not answer: %s", index, reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                out.append(reply)
        return out

    async def _locate(self, key: str, hints: list[int | None]) -> int | None:
        """The worker with a live dialog `key` (dialog id or Call-ID): the hinted ones first
        (the directory, the dialog id's prefix), then all the others at once."""
        tried: set[int] = set()
        for hint in hints:
            if hint is None or hint in tried or not 0 <= hint < len(self.workers):
                continue
            tried.add(hint)
            if await self._ask(hint, lambda w: w.find.remote(key)):
                return hint
        rest = [i for i in range(len(self.workers)) if i not in tried]
        found = await asyncio.gather(
            *(self._ask(i, lambda w: w.find.remote(key)) for i in rest), return_exceptions=True)
        for index, answer in zip(rest, found, strict=True):
            if answer is True:
                return index
        return None

    async def _operate(self, callid: str, op: dict[str, Any]) -> None:
        await self._started()
        payload = _pack(op)
        index = await self._locate(callid, [self.directory.get(callid)])
        if index is None:
            raise CommandError.dialog_not_found()
        answer = _unpack(await self._ask(index, lambda w: w.operate.remote(callid, payload)))
        if answer.get("missing"):  # ended in between
            raise CommandError.dialog_not_found()
        if "error" in answer:
            code, message, data = answer["error"]
            raise CommandError(code, message, data)

    # -- the Python API (and what the driver's ControlApi calls) ----------------------------

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        """Live dialogs of every worker as `dialog:list` objects, worker by worker."""
        _check_str("callid", callid, optional=True)
        _check_str("from_tag", from_tag, optional=True)
        await self._started()
        replies = await self._fan_out(lambda w: w.list_dialogs.remote(callid, from_tag))
        return [dialog for reply in replies for dialog in _unpack(reply)]

    async def end_dialog(self, dialog_id: str, extra_headers: str | None = None) -> None:
        """End a dialog given its dialog id or Call-ID; 404 when there is no such dialog."""
        _check_str("dialog_id", dialog_id)
        _check_str("extra_hdrs", extra_headers, optional=True)
        extra = _pack(parse_extra_headers(extra_headers))
        await self._started()
        index = await self._locate(dialog_id, [worker_of(dialog_id),
                                               self.directory.get(dialog_id)])
        if index is None or not await self._ask(
                index, lambda w: w.end_dialog.remote(dialog_id, extra)):
            raise CommandError.dialog_not_found()

    async def call_transfer(
        self,
        callid: str,
        leg: str,
        destination: str | None = None,
        transfer_callid: str | None = None,
        transfer_leg: str | None = None,
        transfer_fromtag: str | None = None,
        transfer_totag: str | None = None,
    ) -> None:
        """REFER `leg` of `callid`: blind to `destination` or attended (as callops:transfer)."""
        _check_str("callid", callid)
        _check_str("leg", leg)
        if leg not in ("caller", "callee"):
            raise CommandError.invalid_params(f"leg: must be caller or callee, not {leg!r}")
        op = {"op": "transfer", "leg": leg, "destination": destination,
              "transfer_callid": transfer_callid, "transfer_leg": transfer_leg,
              "transfer_fromtag": transfer_fromtag, "transfer_totag": transfer_totag}
        for name in ("destination", "transfer_callid", "transfer_leg", "transfer_fromtag",
                     "transfer_totag"):
            _check_str(name, op[name], optional=True)
        await self._operate(callid, op)

    async def call_hold(self, callid: str, leg: str | None = None,
                        headers: list[str] | str | None = None) -> None:
        """Put one leg or both of `callid` on hold (as callops:hold)."""
        await self._operate(callid, self._hold_op("hold", callid, leg, headers))

    async def call_unhold(self, callid: str, leg: str | None = None,
                          headers: list[str] | str | None = None) -> None:
        """Resume legs put on hold (as callops:unhold)."""
        await self._operate(callid, self._hold_op("unhold", callid, leg, headers))

    @staticmethod
    def _hold_op(kind: str, callid: str, leg: str | None,
                 headers: list[str] | str | None) -> dict[str, Any]:
        _check_str("callid", callid)
        _check_str("leg", leg, optional=True)
        if headers is not None and not isinstance(headers, str) and not (
                isinstance(headers, list | tuple) and all(isinstance(h, str) for h in headers)):
            raise CommandError.invalid_params("headers: expected a string or a list of strings")
        return {"op": kind, "leg": leg,
                "headers": list(headers) if isinstance(headers, tuple) else headers}

    async def statistics(self) -> dict[str, int]:
        """Every statistic summed over the workers, as `statistics:get all` shows them."""
        await self._started()
        total: dict[str, int] = {}
        for reply in await self._fan_out(lambda w: w.statistics.remote()):
            for name, value in _unpack(reply).items():
                total[name] = total.get(name, 0) + int(value)
        total["evi:dropped_events"] = total.get("evi:dropped_events", 0) + self.events.dropped
        total["evi:subscriptions"] = len(self.events.subscriptions())
        return dict(sorted(total.items()))

    async def health(self) -> list[str]:
        """What keeps the service from taking calls (empty when every worker answers)."""
        if self._starting is None or not self._starting.done():
            return ["starting"]
        if self._error is not None:
            return [f"did not start: {self._error['message']}"]
        answers = await asyncio.gather(
            *(asyncio.wait_for(w.ready.remote(), 2.0) for w in self.workers),
            return_exceptions=True)
        return [f"worker {i} does not answer" for i, a in enumerate(answers)
                if isinstance(a, BaseException) or "error" in _unpack(a)]

    async def subscribe(self, event: str, socket: str, expire: int = DEFAULT_EXPIRE) -> None:
        """Send `event` to the sink `socket` (`udp:IP:PORT`, `tcp:IP:PORT`) for `expire`
        seconds, from every worker; 0 removes the subscription (as evi:subscribe)."""
        if not isinstance(event, str) or not event:
            raise CommandError.invalid_params("Empty value for parameter 'event'")
        _check_str("socket", socket)
        if not isinstance(expire, int) or isinstance(expire, bool):
            raise CommandError(INVALID_PARAMS, "Invalid params", "expire: expected an integer")
        if event not in KNOWN_EVENTS:
            raise CommandError(400, "Bad parameter value", f"Unknown event '{event}'")
        if expire < 0:
            raise CommandError.invalid_params("Negative expire value")
        try:
            address = parse_sink(socket)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None
        await self._started()
        try:
            await self.events.subscribe(event, str(address), expire)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        """`ControlApi.subscribe_event`: the same as `subscribe`."""
        await self.subscribe(event, socket, expire)


# -- the driver -----------------------------------------------------------------------------


def controller_handle() -> Any:
    """The running controller's handle (ValueError when there is none)."""
    return ray.get_actor(CONTROLLER, namespace=NAMESPACE)


class RaySwitchboard:
    """The driver's side of a switchboard on Ray: `ControlApi` over the controller, the MI."""

    def __init__(self, config: Config, controller: Any, ready: dict[str, Any],
                 owns_ray: bool) -> None:
        self.config = config
        self.controller = controller
        self.workers: list[dict[str, Any]] = ready["workers"]
        self.mi: MIServer | None = None
        self._started_wall = float(ready["started_at"])
        self._owns_ray = owns_ray
        self._stopped = False

    @property
    def listeners(self) -> list[Address]:
        return [Address(t, h, p) for w in self.workers for t, h, p in w["listeners"]]

    async def start_mi(self) -> None:
        mi = self.config.mi
        if mi.http is not None:
            self.mi = await start_mi_server(self, mi.http.host, mi.http.port,
                                            token=mi.token or None, ready=self.readiness)

    async def stop(self) -> None:
        """Stop the MI, the workers and the controller; leave Ray if `serve` started it."""
        if self._stopped:
            return
        self._stopped = True
        if self.mi is not None:
            await self.mi.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_await(self.controller.stop.remote()), 10.0)
        with contextlib.suppress(Exception):
            ray.kill(self.controller)
        if self._owns_ray:
            ray.shutdown()

    async def readiness(self) -> list[str]:
        """What keeps the service from taking calls (`/readyz`); empty when it is ready."""
        if self._stopped:
            return ["stopping"]
        try:
            problems: list[str] = await asyncio.wait_for(
                _await(self.controller.health.remote()), 5.0)
        except Exception as exc:
            return [f"the controller does not answer: {type(exc).__name__}"]
        return problems

    async def _call(self, ref: Any) -> Any:
        try:
            return await ref
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, CommandError):
                raise CommandError(cause.code, cause.message, cause.data) from None
            raise
        except ray.exceptions.RayActorError:
            raise CommandError(SERVER_ERROR, "Server error",
                               "the switchboard controller is not available") from None

    # -- ControlApi ---------------------------------------------------------------------------

    async def list_dialogs(
        self, callid: str | None = None, from_tag: str | None = None
    ) -> list[dict[str, Any]]:
        dialogs: list[dict[str, Any]] = await self._call(
            self.controller.list_dialogs.remote(callid, from_tag))
        return dialogs

    async def end_dialog(self, dialog_id: str, extra_headers: str | None = None) -> None:
        await self._call(self.controller.end_dialog.remote(dialog_id, extra_headers))

    async def call_transfer(
        self,
        callid: str,
        leg: str,
        destination: str | None = None,
        transfer_callid: str | None = None,
        transfer_leg: str | None = None,
        transfer_fromtag: str | None = None,
        transfer_totag: str | None = None,
    ) -> None:
        await self._call(self.controller.call_transfer.remote(
            callid, leg, destination, transfer_callid, transfer_leg, transfer_fromtag,
            transfer_totag))

    async def call_hold(self, callid: str, leg: str | None = None,
                        headers: list[str] | str | None = None) -> None:
        await self._call(self.controller.call_hold.remote(callid, leg, headers))

    async def call_unhold(self, callid: str, leg: str | None = None,
                          headers: list[str] | str | None = None) -> None:
        await self._call(self.controller.call_unhold.remote(callid, leg, headers))

    async def statistics(self) -> dict[str, int]:
        stats: dict[str, int] = await self._call(self.controller.statistics.remote())
        return stats

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        await self._call(self.controller.subscribe_event.remote(event, socket, expire))

    def uptime_seconds(self) -> float:
        return max(0.0, time.time() - self._started_wall)

    def started_at(self) -> float:
        return self._started_wall


async def _await(ref: Any) -> Any:
    return await ref


def _connect(config: Config) -> bool:
    """Join the cluster at `runtime.ray_address` ("auto" = the local `ray start` one), or
    start a local Ray when there is none. True when this call started or joined Ray (and
    `stop` must leave it); False when the process was connected already."""
    if ray.is_initialized():
        return False
    main = threading.current_thread() is threading.main_thread()
    # ray.init installs its own SIGTERM handler (sys.exit); keep the caller's (the CLI's
    # clean shutdown) in force.
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=config.runtime.ray_address or None, namespace=NAMESPACE)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


async def serve(config: Config) -> RaySwitchboard:
    """Start switchboard on Ray with `config`; returns the driver's running instance.

    Raises OSError when a worker cannot bind its sockets or a switchboard already runs in
    the cluster, ScriptError for a routing script that does not load.
    """
    owns_ray = _connect(config)
    try:
        try:
            controller_handle()
        except ValueError:
            pass
        else:
            raise OSError(errno.EEXIST, (
                f"a switchboard controller already runs in Ray namespace {NAMESPACE!r}; "
                f"stop it first (ray.kill(ray.get_actor({CONTROLLER!r}, "
                f"namespace={NAMESPACE!r})))"))
        remote_controller: Any = ray.remote(Controller)
        controller = remote_controller.options(
            name=CONTROLLER,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
        ).remote(ServiceSpec.from_config(config).pack())
        try:
            ready = _unpack(await asyncio.wait_for(
                _await(controller.ready.remote()), START_TIMEOUT + 30))
            if "error" in ready:
                _raise_start_error(ready["error"])
            sb = RaySwitchboard(config, controller, ready, owns_ray)
            await sb.start_mi()
        except BaseException:
            with contextlib.suppress(Exception):
                ray.kill(controller)
            raise
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    log.info("switchboard on Ray: %d workers, controller %r in namespace %r",
             len(sb.workers), CONTROLLER, NAMESPACE)
    return sb
