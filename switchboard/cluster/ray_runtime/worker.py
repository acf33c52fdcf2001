"""The worker actor of the `ray` runtime: one worker's SIP sockets, proxy core and dialogs.

Worker `i` runs the same worker as the local runtime (`local.build_worker`: proxy core,
endpoints, call metrics, HEP capture), in its own actor's event loop, bound to every
configured listen socket at port + i, with `worker_id=i` (dialog ids start `<i hex>.`). It
record-routes itself, so a dialog's SIP traffic never crosses actors (DESIGN.md §1.1, §1.4).

Its events go from here straight to their `udp:`/`tcp:`/webhook subscribers, through an
`EventBus` of its own (the static subscriptions of the configuration, and the run-time ones
the controller holds: asked for at start, then told as they change, `subscribe`). Nothing
goes to the controller per call: toward it the worker sends one ordered stream of msgpack
batches (one actor call in flight: under load a batch carries whatever came meanwhile) with
only what the controller itself needs: the events its Python subscribers want (`forward`),
the events of a call it follows (`follow`: an attended transfer across workers), its core's
`RemoteDialogs` calls (`link`, `answer`) for dialogs of other workers, and, without a
dialog store, the snapshots of its dialogs. From the controller it takes call operations,
the `RemoteDialogs` calls of other workers for its own dialogs (`remote_calls`, run as
`CallOps.remote_link` / `remote_answer`), and the two steps of an attended transfer whose
first call lives elsewhere (`replaces_for`, `expect_replacing`).

A worker that dies is restarted by Ray (`max_restarts=-1`) and gets its confirmed dialogs
back. Its core tracks which dialogs changed (`Proxy.track_changes`: a set add on the message
path, nothing encoded there). With a `[dialog] store` the worker keeps them there itself
(`store.DialogKeeper`, under a scope of its own index) and reads them back at every start;
without one, every `SNAPSHOT_INTERVAL` it takes the changed ones (`Proxy.take_dirty`) and
sends their msgpack snapshots, with the ids of ended ones, in its ordered batch stream to
the controller, and a restarted worker asks the controller for them. Either way they are
restored (`Proxy.restore_dialog`) before the first message is served.

The worker is a named, detached actor (`context.worker_name`): it outlives a restart of the
controller, which finds it again by name. It watches the controller's name and, should the
controller be gone for good (killed, or replaced by another), stops and removes itself.

Knows nothing of the other workers: the controller routes between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

import ray

from ... import BUILD
from ...actors.eventbus import EventBus, webhook_settings
from ...actors.listing import DialogFilter
from ...actors.worker import Worker
from ...capture import CaptureSwitch
from ...events import E_CALL_TRANSFER, E_DLG_STATE_CHANGED
from ...readout import pack as _pack
from ...readout import unpack as _unpack
from ...sip.dialog import DialogState
from ...sip.operations import Refused
from ...sip.replication import RESTORABLE
from ...store import DialogKeeper, StoreAtStart, open_at_start
from ..local import BuiltWorker, build_worker
from ..shared_port import SharedPort
from .codec import ANSWER, LINK, SNAPSHOTS, ServiceSpec, start_error, unpack_operation
from .context import (
    CALL_TIMEOUT,
    CONTROLLER,
    MAX_PENDING_EVENTS,
    NAMESPACE,
    await_ref,
    node_ip,
    restarted,
)

# The runtime logs under one name, its package's (what a log filter names).
log = logging.getLogger(__package__)

# A restarted actor may find its ports still held by the process it replaces for a moment.
REBIND_TIMEOUT: Final = 10.0
# How often a worker sends the snapshots of the dialogs that changed (`codec.SNAPSHOTS`).
SNAPSHOT_INTERVAL: Final = 0.2
# How often a worker looks whether its controller still exists; it removes itself after
# this many looks in a row found it gone.
WATCH_INTERVAL: Final = 5.0
ORPHANED_AFTER: Final = 2


def _actor_id(handle: Any) -> str:
    actor_id = getattr(handle, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else ""


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
        self.restarted = restarted()
        self.rebind = rebind or self.restarted
        self.built: BuiltWorker | None = None
        self.shared: SharedPort | None = None
        self.dropped = 0
        self.events: EventBus | None = None
        self.keeper: DialogKeeper | None = None
        # Events the controller's Python subscribers want; Call-IDs whose events it follows.
        self._forward: frozenset[str] = frozenset()
        self._follow: set[str] = set()
        self._outbox: list[tuple[str, Any]] = []
        self._sending = False
        self._replicator: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[Worker] | None = None
        # The console's message capture of this worker's traffic, made when first asked.
        self._capture: CaptureSwitch | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: start on the first call
            self._starting = asyncio.ensure_future(self._start())

    async def _started(self) -> Worker:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> Worker:
        loop = asyncio.get_running_loop()
        config = self.spec.config
        self.events = EventBus(webhook=webhook_settings(config.events))
        for event, socket in self.spec.subscriptions:
            await self.events.subscribe(event, socket, None)
        await self._take_plane()
        # Read before the sockets are bound: once they are, messages of the old dialogs may
        # come in, and they must find their dialogs.
        opened: StoreAtStart | None = None
        replicas: list[tuple[dict[str, Any], float]] = []
        if config.dialog.store:
            # As the local runtime, under a scope of this worker's own.
            opened = await open_at_start(config.dialog.store, scope=f"w{self.index}",
                                         route_secret=not config.proxy.route_secret,
                                         who=f"worker {self.index}: ")
        elif self.restarted:
            replicas = await self._stored_snapshots()
        deadline = loop.time() + (REBIND_TIMEOUT if self.rebind else 0.0)
        while True:
            try:
                worker = await self._bind(opened.route_secret if opened is not None else "")
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or loop.time() >= deadline:
                    if opened is not None:
                        opened.store.close()
                    raise
                await asyncio.sleep(0.2)
        # No await from here to the restore: nothing is served before the dialogs are back.
        if opened is not None:
            self.keeper = DialogKeeper(opened.store, worker,
                                       config.dialog.store_interval_ms / 1000,
                                       route_secret=opened.route_secret)
            if opened.unavailable:
                self.keeper.wait_for_store()
            else:
                restored = self.keeper.restore(opened.stored)
                log.info("worker %d: %d of its %d stored dialogs restored from %s",
                         self.index, restored, len(opened.stored), config.dialog.store,
                         extra={"event": "dialogs_restored"})
            self.keeper.start()
        else:
            worker.proxy.track_changes()
            if self.restarted:
                restored = self._restore(worker, replicas)
                log.warning("worker %d restarted by Ray: %d of its %d replicated dialogs "
                            "restored", self.index, restored, len(replicas))
            self._replicator = loop.create_task(self._replicate(worker))
        if self.shared is not None:
            self.shared.start()
        self._watchdog = loop.create_task(self._watch_controller())
        if self.restarted:
            with contextlib.suppress(Exception):
                await self.controller.worker_restarted.remote(self.index, self._describe(worker))
        return worker

    async def _take_plane(self) -> None:
        """The run-time subscriptions and the events to forward, as the controller has them
        now (what it changes later it tells this worker: `subscribe`, `forward`)."""
        try:
            plane = _unpack(await asyncio.wait_for(
                await_ref(self.controller.plane.remote()), CALL_TIMEOUT))
        except Exception as exc:
            log.warning("worker %d: the run-time subscriptions could not be fetched: %s",
                        self.index, exc)
            return
        assert self.events is not None
        for event, socket, expire in plane["subscriptions"]:
            try:
                await self.events.subscribe(str(event), str(socket), int(expire))
            except Exception as exc:  # one sink that does not open must not stop the worker
                log.warning("worker %d: event sink %s: %s", self.index, socket, exc)
        self._forward = frozenset(str(e) for e in plane["forward"])

    async def _watch_controller(self) -> None:
        """Stop and remove this worker once its controller is gone for good (killed without
        a restart, or another one took its name); while Ray restarts it, its name stays."""
        loop = asyncio.get_running_loop()
        mine = _actor_id(self.controller)
        missed = 0
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                found = await loop.run_in_executor(None, _controller_id)
            except Exception:  # the GCS did not answer: no news
                continue
            missed = missed + 1 if found != mine else 0
            if missed >= ORPHANED_AFTER:
                log.warning("worker %d: its controller is gone, the worker stops",
                            self.index)
                await self.stop()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    # -- replication of the dialogs' state ----------------------------------------------------

    async def _stored_snapshots(self) -> list[tuple[dict[str, Any], float]]:
        """What the controller kept of this worker's dialogs: (snapshot, wall time taken)."""
        try:
            data = await asyncio.wait_for(
                await_ref(self.controller.snapshots.remote(self.index)), CALL_TIMEOUT)
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
            self._send(SNAPSHOTS, [wall, [], left_out, False])
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

    def _push_snapshots(self, worker: Worker, everything: bool = False) -> None:
        now = worker.now()
        snapshots, dropped = worker.proxy.take_dirty(now)
        if everything:  # the controller lost its copies: all of them, replacing what it has
            snapshots = [d.snapshot(now) for d in worker.proxy.dialogs
                         if d.state in RESTORABLE]
        if snapshots or dropped or everything:
            self._send(SNAPSHOTS, [time.time(),
                                   [[s["id"], s["call_id"], _pack(s)] for s in snapshots],
                                   dropped, everything])

    def _describe(self, worker: Worker) -> bytes:
        return _pack({
            "index": self.index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": node_ip(),
            "pid": os.getpid(),
            "build": BUILD,
            "listeners": [[a.transport, a.host, a.port] for a in worker.endpoints],
        })

    async def _bind(self, route_secret: str) -> Worker:
        config = self.spec.config
        if route_secret:
            config = dataclasses.replace(config, proxy=dataclasses.replace(
                config.proxy, route_secret=route_secret))
        shared = await self._open_shared_port()
        sockets = self.spec.sockets(0 if shared is not None else self.index)
        if any(s.host in ("0.0.0.0", "::") for s in sockets):
            # Via and Record-Route need an address peers can reach: this node's.
            host = node_ip()
            sockets = [dataclasses.replace(s, host=host) if s.host in ("0.0.0.0", "::")
                       else s for s in sockets]
        built = await build_worker(config, self._publish, sockets=sockets,
                                   worker_id=self.index, reuse_port=shared is not None)
        if shared is not None:
            shared.attach(built.worker)  # no await since the bind: nothing left unmarked
        built.worker.callops.remote = _ToController(self._send)
        self.built = built
        return built.worker

    # -- one address for every worker of the node (docs/ray.md) -----------------------------

    async def _open_shared_port(self) -> SharedPort | None:
        """This worker's end of the node's hand-off channel when the workers share the
        listen addresses (`[runtime] shared_port`, fixed ports); None for a port each."""
        config = self.spec.config
        if not config.runtime.shared_port or any(s.port == 0 for s in config.listen.sockets):
            return None
        if self.shared is None:
            context = ray.get_runtime_context()
            # One directory per serving session (its job) and node: the workers that
            # share one node's sockets.
            directory = os.path.join(
                tempfile.gettempdir(),
                f"switchboard-{context.get_job_id()}-{context.get_node_id()[:12]}")
            match = config.callops.match_param if config.callops.mode == "param" else ""
            self.shared = await SharedPort.open(directory, self.index, match)
        return self.shared

    # -- events and remote dialog calls toward the controller ------------------------------

    def _publish(self, event: str, params: dict[str, Any]) -> None:
        assert self.events is not None
        self.events.publish(event, params)
        follow = self._follow
        callid = params.get("callid")
        if follow and callid in follow:
            self._send(event, dict(params))
            if ((event == E_CALL_TRANSFER and params.get("state") in ("ok", "fail"))
                    or (event == E_DLG_STATE_CHANGED
                        and params.get("new_state") == DialogState.DELETED)):
                follow.discard(callid)
        elif event in self._forward:
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
            return _pack(start_error(exc))
        return self._describe(worker)

    async def find(self, key: str) -> bool:
        """Whether a live dialog has this dialog id or Call-ID here."""
        worker = await self._started()
        return worker.find_dialog(key) is not None

    async def list_dialogs(self, callid: str | None, from_tag: str | None) -> bytes:
        worker = await self._started()
        return _pack(await worker.list_dialogs(callid, from_tag))

    async def list_page(self, after: int | None, limit: int, state: int | None,
                        from_user: str | None, to_user: str | None) -> bytes:
        """`Worker.list_page` of this worker: msgpack [dialogs, next cursor or nil]."""
        worker = await self._started()
        dialogs, more = await worker.list_page(after, limit,
                                               DialogFilter(state, from_user, to_user))
        return _pack([dialogs, more])

    async def operate(self, op: bytes) -> bytes | None:
        """Carry out a packed call operation (`codec.pack_operation`) here: None when done,
        else the refusal as msgpack [status, reason, detail, field]."""
        worker = await self._started()
        try:
            await worker.operate(unpack_operation(op))
        except Refused as exc:
            return _pack([exc.status, exc.reason, exc.detail, exc.field])
        return None

    async def subscribe(self, event: str, socket: str, expire: int) -> None:
        """A run-time subscription made (or renewed, or removed with 0) at the controller;
        raises as `EventBus.subscribe` does."""
        await self._started()
        assert self.events is not None
        await self.events.subscribe(event, socket, expire)

    async def forward(self, events: list[str]) -> None:
        """From now on, send these events to the controller (its Python subscribers')."""
        self._forward = frozenset(events)

    async def follow(self, callid: str) -> None:
        """Send the controller the events of call `callid` until its transfer ends (or the
        call does): the first call of an attended transfer across workers."""
        self._follow.add(callid)

    async def resync(self) -> None:
        """The controller restarted without a dialog store: send it the snapshot of every
        confirmed dialog, replacing whatever it has of this worker."""
        worker = await self._started()
        if self.keeper is None:
            self._push_snapshots(worker, everything=True)

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

    async def capture(self, on: bool | None) -> bytes:
        """This worker's message capture: leased again (True), stopped (False) or only
        looked at (None); its view (`CaptureSwitch.view`) as msgpack."""
        await self._started()
        if self._capture is None:
            assert self.built is not None
            self._capture = CaptureSwitch(self.built)  # tapping points its listeners anew
        view = (await self._capture.enable(on) if on is not None
                else await self._capture.state())
        return _pack(view)

    async def captured(self, call_id: str) -> bytes:
        """The messages this worker captured of `call_id` (msgpack list, nil when none)."""
        await self._started()
        found = (await self._capture.call_messages(call_id) if self._capture is not None
                 else None)
        return _pack(found)

    def _statistics(self) -> dict[str, int]:
        assert self.built is not None
        stats = self.built.statistics()
        if self.events is not None:
            stats.update(self.events.statistics())
        stats["evi:dropped_events"] = stats.get("evi:dropped_events", 0) + self.dropped
        if self.keeper is not None:
            stats.update(self.keeper.statistics())
        if self.shared is not None:
            stats.update(self.shared.statistics())
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

    async def reload_certificates(self) -> bool:
        """Read this worker's `[tls]` files again (the driver's SIGHUP); False when they did
        not load and the old ones stay in use."""
        await self._started()
        return self.built.reload_certificates() if self.built is not None else True

    async def stop(self) -> None:
        """Write the store a last time, close the sockets and the event sinks."""
        if self._capture is not None:
            self._capture.stop()
        if self._replicator is not None:
            self._replicator.cancel()
            self._replicator = None
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            self._watchdog = None
        if self.keeper is not None:
            try:
                await self.keeper.close()
            except Exception:
                log.exception("worker %d: the dialog store's last write failed", self.index)
            self.keeper = None
        if self.built is not None:
            self.built.close()
            self.built = None
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self.events is not None:
            await self.events.close()
            self.events = None


def _controller_id() -> str:
    """The actor id the controller's name stands for now ("" when none has it)."""
    try:
        return _actor_id(ray.get_actor(CONTROLLER, namespace=NAMESPACE))
    except ValueError:
        return ""

