"""The `ray` runtime: switchboard as a named, detached controller actor and N worker actors.

`serve(config)` starts Ray (or joins the cluster at `runtime.ray_address`) and creates the
`Controller` actor ("controller" in namespace "switchboard", detached, restarted by Ray), which
places the `WorkerActor`s. Worker `i` runs the same worker as the local runtime
(`local.build_worker`: proxy core, endpoints, call metrics, HEP capture), in its own actor's
event loop, bound to every configured listen socket at port + i, with `worker_id=i` (dialog
ids start `<i hex>.`). It record-routes itself, so a dialog's SIP traffic never crosses actors
(DESIGN.md §1.1, §1.4).

The controller is the control plane: the directory (Call-ID → worker, fed by the workers'
E_DLG_STATE_CHANGED events; a dialog id names its worker), the routing of operations by
Call-ID or dialog id, the fan-out and merge of `dialog:list` and statistics, and the event bus.
Workers send every event to the controller in msgpack batches (one actor call in flight per
worker: under load a batch carries whatever came meanwhile); the controller's `EventBus`
delivers them to the socket subscribers exactly as in one process, and Python subscribers (an
actor handle or a callable) get them in batches too. Its methods are the Python API
(DESIGN.md §3): `ray.get_actor("controller", namespace="switchboard")`.

Calls linked across workers (issue 5). A transfer's new call may reach another worker than
the old one: that worker's core calls its `RemoteDialogs` (`link`, `answer`), which queues the
call in the same ordered batch stream as its events; the controller routes it to the owner
(`id:` keys by the dialog id's prefix, `callid:` keys by the directory, `replaces:` keys to
every other worker) through one ordered queue per target worker, whose `remote_calls` runs
`CallOps.remote_link` / `remote_answer` in its loop. An attended transfer whose two calls live
on different workers is orchestrated by `call_transfer`: the second call's owner gives the
Replaces tags (`CallOps.replaces_for`), the first call's owner sends the REFER with them (the
"untracked second call" recipe), and the second call's owner is told to expect the replacing
INVITE (`CallOps.expect_replacing`).

A worker that dies is restarted by Ray (`max_restarts=-1`) and gets its confirmed dialogs
back. Every worker's core tracks which dialogs changed (`Proxy.track_changes`: a set add on
the message path, nothing encoded there); every `SNAPSHOT_INTERVAL` the worker takes the
changed ones (`Proxy.take_dirty`) and sends their msgpack snapshots, with the ids of ended
ones, in its ordered batch stream. The controller keeps the latest snapshot of each dialog
per worker. A restarted worker asks for its snapshots before it binds its sockets and
restores them (`Proxy.restore_dialog`) before it serves the first message; the controller
then points its directory at the restored calls again. What is lost in a crash is what had
not reached the controller yet (docs/ray.md).

What `serve` returns lives in the driver: it implements `ControlApi` by calling the
controller and runs the MI HTTP server (with `/metrics` over every worker's statistics), so
`switchboard mi` works as with the local runtime. Payloads between actors are msgpack; what
the controller answers its callers (lists, dicts, `CommandError`) is the public API and
travels the way Ray carries any return value.

Only this module imports `ray` (DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import inspect
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import ray
import ray.actor
import ray.exceptions
import ray.util

from .. import config as config_module
from ..actors.dialog import DialogMessage, Hold, Transfer
from ..actors.eventbus import DEFAULT_EXPIRE, EventBus
from ..actors.worker import Worker
from ..api import INVALID_PARAMS, SERVER_ERROR, CommandError
from ..config import Config, ListenSocket, MIConfig
from ..events import E_CALL_TRANSFER, E_DLG_STATE_CHANGED, KNOWN_EVENTS
from ..events.sinks import parse_sink
from ..metrics import Metrics, SetupTimes
from ..mi.http import MIServer, start_mi_server
from ..readout import pack as _pack
from ..readout import unpack as _unpack
from ..script import ScriptError
from ..sip.callops import CallOpsError
from ..sip.dialog import worker_of
from ..sip.wire import Address
from .local import BuiltWorker, build_worker, parse_extra_headers

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
# What a worker's batch carries besides events (whose names start with "E_"): its core's
# `RemoteDialogs` calls, [key, new_callid, destination] and [key, new_callid, destination,
# status, reason, ok].
LINK: Final = "@link"
ANSWER: Final = "@answer"
# A worker's batch item with its dialogs' state: [wall time, [[dialog id, Call-ID, msgpack
# snapshot], ...], [ids of dialogs that ended]]; sent every SNAPSHOT_INTERVAL seconds when
# something changed.
SNAPSHOTS: Final = "@snapshots"
SNAPSHOT_INTERVAL: Final = 0.2
# New Call-IDs the controller remembers having routed a link for (see `_routed`).
MAX_ROUTED: Final = 10_000
# The method a subscribed actor handle is called with: `on_events(events)`, a list of
# (event, params) pairs in the order they were raised.
ACTOR_SINK_METHOD: Final = "on_events"


# -- what the driver tells the actors (msgpack) ----------------------------------------------


def _encode_config(obj: Any) -> Any:
    """A configuration tree (frozen dataclasses of `switchboard.config`, tuples, scalars) as
    msgpack-able data; `_decode_config` rebuilds it."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"@": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = _encode_config(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [_encode_config(v) for v in obj]
    return obj


def _decode_config(data: Any) -> Any:
    if isinstance(data, dict) and "@" in data:
        cls = getattr(config_module, str(data["@"]), None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"not a configuration class: {data['@']!r}")
        return cls(**{k: _decode_config(v) for k, v in data.items() if k != "@"})
    if isinstance(data, list):
        return tuple(_decode_config(v) for v in data)
    return data


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What the controller and the workers are started with: the worker count (0 = one per
    CPU of the cluster), the static subscriptions, and the configuration each worker builds
    itself from (`local.build_worker`), without the MI part (the driver serves the MI)."""

    workers: int
    subscriptions: tuple[tuple[str, str], ...]  # static (event, socket) pairs
    config: Config

    @classmethod
    def from_config(cls, config: Config) -> ServiceSpec:
        return cls(
            workers=config.runtime.workers,
            subscriptions=tuple((s.event, s.socket) for s in config.events.static_subscriptions()),
            config=dataclasses.replace(config, mi=MIConfig(http=None, token="")),
        )

    def sockets(self, index: int) -> list[ListenSocket]:
        """Worker `index` listens on each base port + index (port 0 stays 0: a free port)."""
        return [dataclasses.replace(s, port=s.port + index if s.port else 0)
                for s in self.config.listen.sockets]

    def pack(self) -> bytes:
        return _pack({"workers": self.workers,
                      "subscriptions": [list(s) for s in self.subscriptions],
                      "config": _encode_config(self.config)})

    @classmethod
    def unpack(cls, data: bytes) -> ServiceSpec:
        raw = _unpack(data)
        config = _decode_config(raw["config"])
        if not isinstance(config, Config):
            raise ValueError("the service spec carries no configuration")
        return cls(
            workers=int(raw["workers"]),
            subscriptions=tuple((str(e), str(s)) for e, s in raw["subscriptions"]),
            config=config,
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


class _ToController:
    """A worker's `RemoteDialogs` (sip.callops): each call goes to the controller in the
    worker's ordered batch stream, behind the events raised before it."""

    __slots__ = ("_send",)

    def __init__(self, send: Callable[[str, Any], None]) -> None:
        self._send = send

    def link(self, key: str, new_callid: str, destination: str) -> None:
        self._send(LINK, [key, new_callid, destination])

    def answer(self, key: str, new_callid: str, destination: str, status: int, reason: str,
               ok: bool) -> None:
        self._send(ANSWER, [key, new_callid, destination, status, reason, ok])


class WorkerActor:
    """One worker: its SIP sockets, its proxy core and its dialogs, in this actor's loop.

    Ray runs an async actor's `__init__` inside the actor's event loop, so binding starts
    there; a restarted actor (Ray re-runs `__init__`) comes back on the same ports with the
    confirmed dialogs the controller kept snapshots of.
    """

    def __init__(self, index: int, spec: bytes, controller: Any, rebind: bool = False) -> None:
        self.index = index
        self.spec = ServiceSpec.unpack(spec)
        self.controller = controller
        self.restarted = _restarted()
        self.rebind = rebind or self.restarted
        self.built: BuiltWorker | None = None
        self.dropped = 0
        self._outbox: list[tuple[str, Any]] = []
        self._sending = False
        self._replicator: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[Worker] | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: start on the first call
            self._starting = asyncio.ensure_future(self._start())

    async def _started(self) -> Worker:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> Worker:
        loop = asyncio.get_running_loop()
        # Asked before the sockets are bound: once they are, messages of the old dialogs may
        # come in, and they must find their dialogs.
        stored = await self._stored_snapshots() if self.restarted else []
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
            restored = self._restore(worker, stored)  # no await before: nothing served yet
            log.warning("worker %d restarted by Ray: %d of its %d replicated dialogs restored",
                        self.index, restored, len(stored))
        self._replicator = loop.create_task(self._replicate(worker))
        if self.restarted:
            with contextlib.suppress(Exception):
                await self.controller.worker_restarted.remote(self.index, self._describe(worker))
        return worker

    # -- replication of the dialogs' state ----------------------------------------------------

    async def _stored_snapshots(self) -> list[tuple[dict[str, Any], float]]:
        """What the controller kept of this worker's dialogs: (snapshot, wall time taken)."""
        try:
            data = await asyncio.wait_for(
                _await(self.controller.snapshots.remote(self.index)), CALL_TIMEOUT)
            return [(_unpack(snapshot), float(taken)) for snapshot, taken in _unpack(data)]
        except Exception:
            log.exception("worker %d: the snapshots of its dialogs could not be fetched; "
                          "it starts without them", self.index)
            return []

    def _restore(self, worker: Worker, stored: list[tuple[dict[str, Any], float]]) -> int:
        proxy = worker.proxy
        now, wall = worker.now(), time.time()
        restored = 0
        left_out: list[str] = []
        for snapshot, taken in stored:
            try:
                if proxy.restore_dialog(snapshot, now, max(0.0, wall - taken)) is not None:
                    restored += 1
                    continue
            except ValueError as exc:
                log.warning("worker %d: a dialog snapshot was not restored: %s", self.index, exc)
            dialog_id = snapshot.get("id") if isinstance(snapshot, dict) else None
            if isinstance(dialog_id, str):
                left_out.append(dialog_id)
        if left_out:  # the controller need not keep them any longer
            self._send(SNAPSHOTS, [wall, [], left_out])
        worker.flush()  # arms the loop timer for the restored lifetimes
        return restored

    async def _replicate(self, worker: Worker) -> None:
        """Every SNAPSHOT_INTERVAL: the snapshots of the dialogs that changed, and the ids of
        those that ended, to the controller (behind the events raised before them)."""
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            try:
                self._push_snapshots(worker)
            except Exception:
                log.exception("worker %d: dialog snapshots failed", self.index)

    def _push_snapshots(self, worker: Worker) -> None:
        snapshots, dropped = worker.proxy.take_dirty(worker.now())
        if snapshots or dropped:
            self._send(SNAPSHOTS, [time.time(),
                                   [[s["id"], s["call_id"], _pack(s)] for s in snapshots],
                                   dropped])

    def _describe(self, worker: Worker) -> bytes:
        return _pack({
            "index": self.index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": _node_ip(),
            "pid": os.getpid(),
            "listeners": [[a.transport, a.host, a.port] for a in worker.endpoints],
        })

    async def _bind(self) -> Worker:
        sockets = self.spec.sockets(self.index)
        if any(s.host in ("0.0.0.0", "::") for s in sockets):
            # Via and Record-Route need an address peers can reach: this node's.
            node_ip = _node_ip()
            sockets = [dataclasses.replace(s, host=node_ip) if s.host in ("0.0.0.0", "::")
                       else s for s in sockets]
        built = await build_worker(self.spec.config, self._publish, sockets=sockets,
                                   worker_id=self.index)
        built.worker.callops.remote = _ToController(self._send)
        built.worker.proxy.track_changes()
        self.built = built
        return built.worker

    # -- events and remote dialog calls toward the controller ------------------------------

    def _publish(self, event: str, params: dict[str, Any]) -> None:
        self._send(event, dict(params))

    def _send(self, kind: str, payload: Any) -> None:
        if len(self._outbox) >= MAX_PENDING_EVENTS:
            self.dropped += 1
            if kind in (LINK, ANSWER, SNAPSHOTS):
                log.warning("worker %d: %s %r dropped, the controller is behind", self.index,
                            kind, payload)
            return
        self._outbox.append((kind, payload))
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
        return _pack(await worker.list_dialogs(callid, from_tag))

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

    async def remote_calls(self, batch: bytes) -> None:
        """`RemoteDialogs` calls of other workers for dialogs of this one, in the order their
        workers made them (msgpack list of [LINK | ANSWER, args])."""
        worker = await self._started()
        callops = worker.callops
        for kind, args in _unpack(batch):
            try:
                if kind == LINK:
                    key, new_callid, destination = args
                    callops.remote_link(str(key), str(new_callid), str(destination))
                elif kind == ANSWER:
                    key, new_callid, destination, status, reason, ok = args
                    callops.remote_answer(str(key), str(new_callid), str(destination),
                                          int(status), str(reason), bool(ok), worker.now())
            except Exception:  # one bad call must not keep the others from their dialogs
                log.exception("worker %d: remote %s %r failed", self.index, kind, args)
        worker.flush()

    async def replaces_for(self, callid: str, leg: str) -> bytes:
        """[to-tag, from-tag, default destination] of `leg` of the call `callid` here, for an
        attended transfer run on another worker (nil when the call is not here)."""
        worker = await self._started()
        found = worker.callops.replaces_for(callid, leg)
        return _pack(list(found) if found is not None else None)

    async def expect_replacing(self, callid: str, initiator_callid: str) -> bytes:
        """The call `initiator_callid` (elsewhere) is being transferred onto `callid` here;
        answers what was expected before (to put it back should the transfer be refused), nil
        when the call is not here."""
        worker = await self._started()
        dialog = worker.proxy.dialogs.by_call_id(callid)
        previous = (worker.callops.ops_of(dialog).transfer_callid if dialog is not None
                    else None)
        if not worker.callops.expect_replacing(callid, initiator_callid):
            return _pack(None)
        worker.flush()
        return _pack(previous)

    def _statistics(self) -> dict[str, int]:
        assert self.built is not None
        stats = self.built.statistics()
        stats["evi:dropped_events"] = self.dropped
        return stats

    async def statistics(self) -> bytes:
        await self._started()
        return _pack(self._statistics())

    async def metrics(self) -> bytes:
        """Statistics and the call-setup histogram ([counts, total]) in one answer."""
        await self._started()
        assert self.built is not None
        setup = self.built.call_metrics.setup
        return _pack({"statistics": self._statistics(),
                      "setup": [list(setup.counts), setup.total]})

    async def stop(self) -> None:
        if self._replicator is not None:
            self._replicator.cancel()
            self._replicator = None
        if self.built is not None:
            self.built.close()
            self.built = None


# -- the controller actor -------------------------------------------------------------------


def _check_str(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise CommandError.invalid_params(f"{name}: expected a string")


def _sink_key(sink: Any) -> str:
    """What names a Python subscriber, so that subscribing it again renews (or, with expire
    0, removes) its subscription: the actor's id, or the callable's qualified name."""
    if isinstance(sink, ray.actor.ActorHandle):
        actor_id = getattr(sink, "_actor_id", None)
        return f"actor:{actor_id.hex() if actor_id is not None else id(sink)}"
    if isinstance(sink, functools.partial):
        return f"{_sink_key(sink.func)}{sink.args!r}{sorted(sink.keywords.items())!r}"
    name = getattr(sink, "__qualname__", None) or type(sink).__qualname__
    return f"python:{getattr(sink, '__module__', None) or '?'}.{name}"


class _PythonSink:
    """A Python subscriber: an actor handle, called `on_events(events)` with a list of
    (event, params) pairs, or a callable, called `sink(event, params)` in the controller's
    loop (an awaitable it returns is awaited before the next event). Events go in order, one
    batch at a time: what comes while a batch is on its way rides in the next one."""

    def __init__(self, key: str, target: Any) -> None:
        self.key = key
        self.target = target
        self.expiry: dict[str, float] = {}  # event -> time.monotonic() deadline
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.sending = False
        self.gone = False
        self.dropped = 0

    def events(self, now: float) -> list[str]:
        return [e for e, deadline in self.expiry.items() if deadline > now]

    def push(self, event: str, params: dict[str, Any]) -> None:
        if len(self.pending) >= MAX_PENDING_EVENTS:
            self.dropped += 1
            return
        self.pending.append((event, dict(params)))
        if not self.sending:
            self.sending = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending and not self.gone:
                batch, self.pending = self.pending, []
                try:
                    await self._deliver(batch)
                except ray.exceptions.RayActorError as exc:
                    # The subscriber is gone for good: so is its subscription.
                    self.gone = True
                    self.dropped += len(batch) + len(self.pending)
                    self.pending = []
                    log.warning("event subscriber %s is gone: %s", self.key, exc)
                except Exception:
                    self.dropped += len(batch)
                    log.exception("event subscriber %s failed", self.key)
        finally:
            self.sending = False

    async def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if isinstance(self.target, ray.actor.ActorHandle):
            await getattr(self.target, ACTOR_SINK_METHOD).remote(batch)
            return
        for event, params in batch:
            try:
                result = self.target(event, params)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.dropped += 1
                log.exception("event subscriber %s failed on %s", self.key, event)


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
        # Python subscribers (actor handles, callables) by `_sink_key`.
        self._python_sinks: dict[str, _PythonSink] = {}
        # `RemoteDialogs` calls waiting for their target worker (one call in flight each).
        self._remote_out: dict[int, list[tuple[str, Any]]] = {}
        self._remote_sending: set[int] = set()
        # New Call-IDs a worker linked through here (most recent last, bounded).
        self._routed: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Attended transfers across workers started here: first Call-ID -> (the replaces
        # key, the worker of the second call); and new Call-IDs this controller linked to
        # the second call itself -> the same (see `_follow_attended`).
        self._attended: dict[str, tuple[str, int]] = {}
        self._relayed: dict[str, tuple[str, int]] = {}
        # The latest snapshot of every replicated dialog, per worker: dialog id -> (Call-ID,
        # msgpack snapshot, wall time it was sent at).
        self.replicas: dict[int, dict[str, tuple[str, bytes, float]]] = {}
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
        """A worker's events and `RemoteDialogs` calls, in the order it made them (msgpack
        list of [event, params] / [LINK | ANSWER, args])."""
        directory = self.directory
        for kind, payload in _unpack(batch):
            if kind in (LINK, ANSWER):
                self._route(index, kind, payload)
                continue
            if kind == SNAPSHOTS:
                self._keep_snapshots(index, payload)
                continue
            if kind == E_DLG_STATE_CHANGED:
                callid = payload.get("callid")
                if payload.get("new_state") == 5:
                    if directory.get(callid) == index:
                        del directory[callid]
                    pending = self._attended.get(callid)
                    if pending is not None and pending not in self._relayed.values():
                        del self._attended[callid]
                else:
                    directory[callid] = index
            elif kind == E_CALL_TRANSFER and self._attended:
                self._follow_attended(payload)
            self.events.publish(kind, payload)
            if self._python_sinks:
                self._to_python(kind, payload)

    async def worker_restarted(self, index: int, info: bytes) -> None:
        """Ray restarted worker `index`, it restored the dialogs kept here and listens again:
        the directory knows those dialogs and nothing else of it."""
        for callid in [c for c, owner in self.directory.items() if owner == index]:
            del self.directory[callid]
        for callid, _, _ in self.replicas.get(index, {}).values():
            self.directory[callid] = index
        if 0 <= index < len(self.info):
            self.info[index] = _unpack(info)

    def _keep_snapshots(self, index: int, payload: list[Any]) -> None:
        taken, snapshots, dropped = payload
        kept = self.replicas.setdefault(index, {})
        for dialog_id, callid, snapshot in snapshots:
            kept[str(dialog_id)] = (str(callid), bytes(snapshot), float(taken))
        for dialog_id in dropped:
            kept.pop(str(dialog_id), None)

    async def snapshots(self, index: int) -> bytes:
        """The snapshots kept of worker `index`'s dialogs, for it to restore after a restart
        (msgpack list of [msgpack snapshot, wall time sent])."""
        return _pack([[snapshot, taken]
                      for _, snapshot, taken in self.replicas.get(index, {}).values()])

    def replicated(self, index: int) -> list[dict[str, Any]]:
        """The snapshots kept of worker `index`'s dialogs, decoded (`Dialog.snapshot`
        dicts), for tests and tools."""
        return [_unpack(snapshot) for _, snapshot, _ in self.replicas.get(index, {}).values()]

    async def stop(self) -> None:
        """Close every worker's sockets and the event sinks; the actors stay until killed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(w.stop.remote() for w in self.workers), return_exceptions=True),
                5.0,
            )
        await self._kill_workers()
        await self.events.close()
        self._python_sinks.clear()

    # -- dialogs linked across workers ---------------------------------------------------------

    def _route(self, origin: int, kind: str, args: list[Any]) -> None:
        """Hand a worker's `RemoteDialogs` call to the worker(s) that may own the dialog."""
        if kind == LINK:
            self._routed[str(args[1])] = None
            if len(self._routed) > MAX_ROUTED:
                self._routed.popitem(last=False)
        for target in self._owners(str(args[0]), origin):
            self._tell(target, kind, args)

    def _owners(self, key: str, origin: int) -> list[int]:
        kind, _, value = key.partition(":")
        others = [i for i in range(len(self.workers)) if i != origin]
        if kind == "id":
            owner = worker_of(value)
            return [owner] if owner in others else []
        if kind == "callid":
            owner = self.directory.get(value)
            if owner is not None and owner != origin:
                return [owner]
        # A Call-ID the directory does not know (yet), or a Replaces: the owner of the
        # replaced call and the worker whose attended REFER awaits it may be any other.
        return others

    def _tell(self, target: int, kind: str, args: list[Any]) -> None:
        self._remote_out.setdefault(target, []).append((kind, args))
        if target not in self._remote_sending:
            self._remote_sending.add(target)
            asyncio.get_running_loop().create_task(self._send_remote(target))

    async def _send_remote(self, target: int) -> None:
        try:
            while batch := self._remote_out.get(target):
                self._remote_out[target] = []
                try:
                    await asyncio.wait_for(
                        _await(self.workers[target].remote_calls.remote(_pack(batch))),
                        CALL_TIMEOUT)
                except Exception as exc:  # restarting: its dialogs are gone anyway
                    log.warning("worker %d: %d remote dialog calls lost: %s", target,
                                len(batch), exc)
        finally:
            self._remote_sending.discard(target)

    def _follow_attended(self, params: dict[str, Any]) -> None:
        """Link the second call of a cross-worker attended transfer when the replacing INVITE
        reached the first call's worker: its core links the first call (the untracked-call
        recipe) but tells nobody else (`CallOps._link_untracked` does not call
        `RemoteDialogs`), so the controller does it from the first call's events — once, and
        only when no worker linked that new call through here already."""
        pending = self._attended.get(str(params.get("callid")))
        if pending is None:
            return
        new_callid = str(params.get("transfer_callid") or "")
        destination = str(params.get("destination") or "")
        state = params.get("state")
        if state == "start" and new_callid:
            if new_callid not in self._routed and new_callid not in self._relayed:
                self._relayed[new_callid] = pending
                self._tell(pending[1], LINK, [pending[0], new_callid, destination])
        elif state in ("ok", "fail"):
            relayed = self._relayed.pop(new_callid, None) if new_callid else None
            if relayed is not None:
                code, _, reason = str(params.get("status") or "").partition(" ")
                self._tell(relayed[1], ANSWER, [relayed[0], new_callid, destination,
                                                int(code) if code.isdigit() else 0, reason,
                                                state == "ok"])
            del self._attended[str(params.get("callid"))]

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
        index = await self._locate(callid, [self.directory.get(callid)])
        if index is None:
            raise CommandError.dialog_not_found()
        await self._operate_on(index, callid, op)

    async def _operate_on(self, index: int, callid: str, op: dict[str, Any]) -> None:
        payload = _pack(op)
        answer = _unpack(await self._ask(index, lambda w: w.operate.remote(callid, payload)))
        if answer.get("missing"):  # ended in between
            raise CommandError.dialog_not_found()
        if "error" in answer:
            code, message, data = answer["error"]
            raise CommandError(code, message, data)

    async def _attended_transfer(self, callid: str, op: dict[str, Any]) -> None:
        """`call_transfer` with a `transfer_callid`: on the worker of `callid` when both calls
        are there (or the second is nowhere), across the two workers otherwise. Refuses what
        the one-process runtime refuses, in the same order."""
        transfer_callid: str = op["transfer_callid"]
        transfer_leg: str | None = op["transfer_leg"]
        await self._started()
        if transfer_leg is None and not (
                op["transfer_fromtag"] and op["transfer_totag"] and op["destination"]):
            raise CommandError.invalid_params(
                "transfer_destination: transfer_fromtag, transfer_totag and "
                "transfer_destination go together")
        second = await self._locate(transfer_callid, [self.directory.get(transfer_callid)])
        if transfer_leg is not None:
            if second is None:
                raise CommandError(404, "Transfer dialog not found")
            if transfer_leg not in ("caller", "callee"):
                raise CommandError.invalid_params(
                    f"transfer_leg: must be caller or callee, not {transfer_leg!r}")
        first = await self._locate(callid, [self.directory.get(callid)])
        if first is None:
            raise CommandError.dialog_not_found()
        if second is None or second == first:
            await self._operate_on(first, callid, op)
            return
        if transfer_leg is not None:
            # The second call's worker gives the Replaces tags; the first call's worker then
            # REFERs with them as for a call it does not track (spec §3.2 recipe).
            found = _unpack(await self._ask(
                second, lambda w: w.replaces_for.remote(transfer_callid, transfer_leg)))
            if found is None:
                raise CommandError(404, "Transfer dialog not found")
            to_tag, from_tag, default_destination = found
            op = {**op, "transfer_leg": None,
                  "destination": op["destination"] or default_destination,
                  "transfer_fromtag": from_tag, "transfer_totag": to_tag}
        key = f"replaces:{transfer_callid};{op['transfer_totag']};{op['transfer_fromtag']}"
        # Both before the REFER goes: the transferee may send its INVITE at once.
        previous = _unpack(await self._ask(
            second, lambda w: w.expect_replacing.remote(transfer_callid, callid)))
        self._attended[callid] = (key, second)
        try:
            await self._operate_on(first, callid, op)
        except BaseException:
            self._attended.pop(callid, None)
            if previous is not None:
                with contextlib.suppress(Exception):
                    await self._ask(second, lambda w: w.expect_replacing.remote(
                        transfer_callid, previous))
            raise

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
        """REFER `leg` of `callid`: blind to `destination` or attended (as callops:transfer),
        also when `transfer_callid` lives on another worker than `callid`."""
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
        if transfer_callid is None:
            await self._operate(callid, op)
        else:
            await self._attended_transfer(callid, op)

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

    async def metrics(self) -> dict[str, Any]:
        """`{"statistics": ..., "setup": [counts, total]}`: every statistic summed over the
        workers (as `statistics`) and their call-setup histograms merged (for `/metrics`)."""
        await self._started()
        total: dict[str, int] = {}
        setup = SetupTimes()
        for reply in await self._fan_out(lambda w: w.metrics.remote()):
            snapshot = _unpack(reply)
            for name, value in snapshot["statistics"].items():
                total[name] = total.get(name, 0) + int(value)
            counts, seconds = snapshot["setup"]
            setup.merge(SetupTimes(counts=[int(c) for c in counts], total=float(seconds)))
        now = time.monotonic()
        dropped = self.events.dropped + sum(s.dropped for s in self._python_sinks.values())
        total["evi:dropped_events"] = total.get("evi:dropped_events", 0) + dropped
        total["evi:subscriptions"] = len(self.events.subscriptions()) + sum(
            len(s.events(now)) for s in self._python_sinks.values())
        return {"statistics": dict(sorted(total.items())), "setup": [setup.counts, setup.total]}

    async def statistics(self) -> dict[str, int]:
        """Every statistic summed over the workers, as `statistics:get all` shows them."""
        snapshot = await self.metrics()
        stats: dict[str, int] = snapshot["statistics"]
        return stats

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

    async def subscribe(self, event: str, socket: Any, expire: int = DEFAULT_EXPIRE) -> None:
        """Send `event` from every worker to `socket` for `expire` seconds; 0 removes the
        subscription (as evi:subscribe). `socket` is a sink string (`udp:IP:PORT`,
        `tcp:IP:PORT`), an actor handle (its `on_events(events)` gets lists of (event,
        params) pairs) or a callable (`socket(event, params)`, run in the controller)."""
        if not isinstance(event, str) or not event:
            raise CommandError.invalid_params("Empty value for parameter 'event'")
        python = not isinstance(socket, str) and (
            isinstance(socket, ray.actor.ActorHandle) or callable(socket))
        if not python:
            _check_str("socket", socket)
        if not isinstance(expire, int) or isinstance(expire, bool):
            raise CommandError(INVALID_PARAMS, "Invalid params", "expire: expected an integer")
        if event not in KNOWN_EVENTS:
            raise CommandError(400, "Bad parameter value", f"Unknown event '{event}'")
        if expire < 0:
            raise CommandError.invalid_params("Negative expire value")
        if python:
            await self._started()
            self._subscribe_python(event, socket, expire)
            return
        try:
            address = parse_sink(socket)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None
        await self._started()
        try:
            await self.events.subscribe(event, str(address), expire)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None

    def _subscribe_python(self, event: str, target: Any, expire: int) -> None:
        key = _sink_key(target)
        sink = self._python_sinks.get(key)
        if expire == 0:
            if sink is not None:
                sink.expiry.pop(event, None)
                if not sink.expiry:
                    del self._python_sinks[key]
            return
        if sink is None or sink.gone:
            sink = self._python_sinks[key] = _PythonSink(key, target)
        sink.target = target  # the latest one (a callable subscribed again may be new)
        sink.expiry[event] = time.monotonic() + expire

    def _to_python(self, event: str, params: dict[str, Any]) -> None:
        now = time.monotonic()
        for key, sink in list(self._python_sinks.items()):
            if sink.gone or not sink.events(now):
                del self._python_sinks[key]
            elif sink.expiry.get(event, 0.0) > now:
                sink.push(event, params)

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
        self._setup = SetupTimes()
        self._started_wall = float(ready["started_at"])
        self._owns_ray = owns_ray
        self._stopped = False

    @property
    def listeners(self) -> list[Address]:
        return [Address(t, h, p) for w in self.workers for t, h, p in w["listeners"]]

    async def start_mi(self) -> None:
        mi = self.config.mi
        if mi.http is not None:
            metrics = Metrics(self._scrape, lambda: self._setup, runtime="ray")
            self.mi = await start_mi_server(self, mi.http.host, mi.http.port,
                                            token=mi.token or None, metrics=metrics.exposition,
                                            ready=self.readiness)

    async def _scrape(self) -> dict[str, int]:
        """The statistics of a `/metrics` scrape; keeps the merged call-setup histogram."""
        snapshot = await self._call(self.controller.metrics.remote())
        counts, total = snapshot["setup"]
        self._setup = SetupTimes(counts=[int(c) for c in counts], total=float(total))
        stats: dict[str, int] = snapshot["statistics"]
        return stats

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
