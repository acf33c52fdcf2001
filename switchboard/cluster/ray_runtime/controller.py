"""The controller actor of the `ray` runtime: its control plane and its Python API.

The controller ("controller" in namespace "switchboard", detached, restarted by Ray) places
the `WorkerActor`s (named and detached: they outlive the controller's restart, which finds
them again) and keeps what no single worker knows, none of it per call: the run-time event
subscriptions (told to every worker, which delivers its own events to the socket
subscribers; kept in Ray's GCS so that a restarted controller has them again), the Python
subscribers (`sinks`; the workers forward only the events those want), the routing of
operations by Call-ID or dialog id (a dialog id names its worker; a Call-ID is asked of the
workers, and the answer remembered), the fan-out and merge of `dialog:list` and statistics,
and, without a dialog store, the latest snapshot of every confirmed dialog per worker, which
a restarted worker gets its calls back from (with a store the workers keep them there). Its
public methods are the Python API (DESIGN.md §3):
`ray.get_actor("controller", namespace="switchboard")`.

Calls linked across workers. A transfer's new call may reach another worker than the old
one: that worker's core calls its `RemoteDialogs` (`link`, `answer`), which rides in its
ordered batch stream; the controller routes it to the owner (`id:` keys by the dialog id's
prefix, `callid:` and `replaces:` keys to every other worker) through one
ordered queue per target worker. An attended transfer whose two calls live on different
workers is orchestrated by `operate`: the second call's owner gives the Replaces tags
(`CallOps.replaces_for`), the first call's owner sends the REFER with them (the "untracked
second call" recipe) and the events of that call (`WorkerActor.follow`), and the second
call's owner is told to expect the replacing INVITE (`CallOps.expect_replacing`).

Knows nothing of SIP: the workers own every socket and every dialog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import ray
import ray.actor
import ray.exceptions
from ray.experimental import internal_kv

from ...actors.eventbus import DEFAULT_EXPIRE
from ...api import INVALID_PARAMS, SERVER_ERROR, CallOperations, CommandError, command_error
from ...events import E_CALL_TRANSFER, E_DLG_STATE_CHANGED, KNOWN_EVENTS
from ...events.sinks import parse_sink
from ...metrics import SetupTimes
from ...readout import pack as _pack
from ...readout import unpack as _unpack
from ...sip.dialog import DialogState, worker_of
from ...sip.operations import NOT_FOUND, AttendedTransfer, EndCall, Operation, Refused
from .codec import (
    ANSWER,
    LINK,
    SNAPSHOTS,
    ServiceSpec,
    pack_operation,
    start_error,
    unpack_operation,
)
from .context import CALL_TIMEOUT, NAMESPACE, await_ref, restarted, worker_name
from .sinks import PythonSinks
from .worker import WorkerActor

# The runtime logs under one name, its package's (what a log filter names).
log = logging.getLogger(__package__)

# How long placing and starting the workers may take before `serve` gives up (a cluster
# without the CPUs asked for would otherwise wait forever).
START_TIMEOUT: Final = 60.0
# New Call-IDs the controller remembers having routed a link for (see `_routed`), and
# Call-IDs it remembers the worker of (see `_located`).
MAX_ROUTED: Final = 10_000
# Where in Ray's GCS (internal KV, namespace NAMESPACE) the controller keeps what its restart
# must find again: the run-time socket subscriptions and the service's start time.
PLANE_KEY: Final = b"controller-plane"


def _named(name: str) -> Any:
    """The live actor of that name in NAMESPACE, or None."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _remember(cache: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > MAX_ROUTED:
        cache.popitem(last=False)


def _check_str(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise CommandError.invalid_params(f"{name}: expected a string")



def _page_of(worker: Any, *, after: int | None, limit: int, state: int | None,
             from_user: str | None, to_user: str | None) -> Any:
    return worker.list_page.remote(after, limit, state, from_user, to_user)


class Controller(CallOperations):
    """The control plane of a switchboard on Ray; its public methods are the Python API.

    Operations take the same parameters and raise the same `CommandError`s as the management
    commands of the same name (`callops:transfer` is `call_transfer`, `dialog:list` is
    `list_dialogs`, `dialog:end_dlg` is `end_dialog`, `evi:subscribe` is `subscribe`); the
    call operations among them are `api.CallOperations`', made into values there.
    """

    def __init__(self, spec: bytes) -> None:
        self.spec = ServiceSpec.unpack(spec)
        self.workers: list[Any] = []
        self.info: list[dict[str, Any]] = []
        # Call-IDs an operation found on a worker -> that worker (a hint, asked first).
        self._located: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.started_wall = time.time()
        # Run-time socket subscriptions, as every worker has them: (event, socket) -> wall
        # time they expire at.
        self._subscriptions: dict[tuple[str, str], float] = {}
        # Python subscribers (actor handles, callables), and the events they want (what the
        # workers forward here).
        self._python_sinks = PythonSinks()
        self._forwarded: frozenset[str] = frozenset()
        # What the workers sent here, by kind ("events", "links", "snapshots"): a read-out
        # of what the control plane carries.
        self.received: collections.Counter[str] = collections.Counter()
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
            self._error = start_error(exc)["error"]
        if self._error is not None:
            await self._kill_workers()

    async def _place_workers(self) -> None:
        context = ray.get_runtime_context()
        me = context.current_actor
        rebind = restarted()
        if rebind:
            await self._load_plane()
        else:
            await self._save_plane()
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.spec.workers or max(1, int(cpus))
        # One CPU each while they fit, an even share when more workers than CPUs are asked
        # for (rounded down: Ray counts resources in units of 1/10000).
        share = 1.0 if count <= cpus else math.floor(cpus / count * 10_000) / 10_000
        spec = self.spec.pack()
        remote_worker: Any = ray.remote(WorkerActor)
        adopted: list[int] = []
        for index in range(count):
            name = worker_name(index)
            found = _named(name)
            if found is not None and rebind:
                # Ray restarted this controller: the workers kept serving, take them back.
                self.workers.append(found)
                adopted.append(index)
                continue
            if found is not None:  # a previous service's, left behind
                ray.kill(found, no_restart=True)
                while _named(name) is not None:
                    await asyncio.sleep(0.1)
            self.workers.append(remote_worker.options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
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
        if adopted:
            log.warning("switchboard controller restarted: %d running workers taken back",
                        len(adopted))
            # The Python subscribers came back from Ray's GCS (the ones that could be
            # pickled): the workers forward what they want, no more; without a store, the
            # snapshots of their dialogs are gone with the old controller: each worker sends
            # all of them again.
            self._forwarded = wanted = self._python_sinks.wanted(time.monotonic())
            await asyncio.gather(*(
                self._ask(i, lambda w: w.forward.remote(sorted(wanted))) for i in adopted),
                return_exceptions=True)
            await asyncio.gather(*(
                self._ask(i, lambda w: w.resync.remote()) for i in adopted),
                return_exceptions=True)

    # -- what a restarted controller finds again (Ray's GCS) ----------------------------------

    async def _load_plane(self) -> None:
        try:
            data = await asyncio.to_thread(internal_kv._internal_kv_get, PLANE_KEY,
                                           namespace=NAMESPACE)
        except Exception:
            log.exception("switchboard controller: its subscriptions could not be read back")
            return
        if not data:
            return
        plane = _unpack(data)
        self.started_wall = float(plane["started_at"])
        now = time.time()
        self._subscriptions = {(str(e), str(s)): float(t) for e, s, t in plane["subscriptions"]
                               if float(t) > now}
        for event, pickled, until in plane.get("python", []):
            if float(until) <= now:
                continue
            try:
                target = ray.cloudpickle.loads(pickled)
            except Exception:
                log.exception("switchboard controller: a Python subscriber of %s could not be "
                              "restored", event)
                continue
            self._python_sinks.subscribe(str(event), target, max(1, math.ceil(until - now)))

    async def _save_plane(self) -> None:
        data = _pack({"started_at": self.started_wall,
                      "subscriptions": [[e, s, t] for (e, s), t in
                                        self._subscriptions.items()],
                      "python": self._pickled_python_sinks()})
        try:
            await asyncio.to_thread(internal_kv._internal_kv_put, PLANE_KEY, data,
                                    namespace=NAMESPACE)
        except Exception:
            log.exception("switchboard controller: its subscriptions could not be kept in "
                          "Ray's GCS (a restart of the controller would lose them)")

    def _pickled_python_sinks(self) -> list[list[Any]]:
        """The Python subscribers as [event, pickled subscriber, wall expiry]: an actor
        handle pickles to a handle of the same actor, a callable by value (as it came)."""
        kept: list[list[Any]] = []
        for event, target, until in self._python_sinks.kept(time.monotonic(), time.time()):
            try:
                kept.append([event, ray.cloudpickle.dumps(target), until])
            except Exception:
                log.warning("switchboard controller: the Python subscriber of %s cannot be "
                            "pickled; a restart of the controller would lose it", event)
        return kept

    def plane(self) -> bytes:
        """What a starting worker needs of the controller: the run-time subscriptions
        ([event, socket, seconds left]) and the events its Python subscribers want."""
        now = time.time()
        return _pack({
            "subscriptions": [[e, s, math.ceil(t - now)]
                              for (e, s), t in self._subscriptions.items() if t > now],
            "forward": sorted(self._forwarded)})

    async def _kill_workers(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(worker)
        self.workers = []

    # -- driver and workers ------------------------------------------------------------------

    async def ready(self) -> bytes:
        """Wait until started: `{"workers": [...], "started_at": t, "pid": controller's
        process}` or `{"error": {...}}`."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        if self._error is not None:
            return _pack({"error": self._error})
        return _pack({"workers": self.info, "started_at": self.started_wall,
                      "pid": os.getpid()})

    def service_spec(self) -> bytes:
        """The service spec it was started with (`ServiceSpec.pack`)."""
        return self.spec.pack()

    def workers_info(self) -> list[dict[str, Any]]:
        """Each worker: index, node id and IP, pid, listeners ([transport, host, port])."""
        return list(self.info)

    def worker_handles(self) -> list[Any]:
        """The worker actors' handles, by index (for tests and tools)."""
        return list(self.workers)

    def started_at(self) -> float:
        return self.started_wall

    async def publish(self, index: int, batch: bytes) -> None:
        """What a worker sends here, in the order it made it (msgpack list of [event,
        params] / [LINK | ANSWER, args] / [SNAPSHOTS, ...]): the events of its calls this
        controller follows or its Python subscribers want, not every event."""
        received = self.received
        received["batches"] += 1
        for kind, payload in _unpack(batch):
            if kind in (LINK, ANSWER):
                received["links"] += 1
                self._route(index, kind, payload)
                continue
            if kind == SNAPSHOTS:
                received["snapshots"] += len(payload[1])
                self._keep_snapshots(index, payload)
                continue
            received["events"] += 1
            if kind == E_DLG_STATE_CHANGED:
                callid = payload.get("callid")
                if payload.get("new_state") == DialogState.DELETED:
                    pending = self._attended.get(callid)
                    if pending is not None and pending not in self._relayed.values():
                        del self._attended[callid]
            elif kind == E_CALL_TRANSFER and self._attended:
                self._follow_attended(payload)
            if self._python_sinks:
                self._python_sinks.publish(kind, payload)
        if self._forwarded and self._python_sinks.wanted(time.monotonic()) != self._forwarded:
            await self._push_forward()  # some expired

    async def _push_forward(self) -> None:
        """Tell every worker which events the Python subscribers want now."""
        self._forwarded = wanted = self._python_sinks.wanted(time.monotonic())
        events = sorted(wanted)
        await self._fan_out(lambda w: w.forward.remote(events))

    async def worker_restarted(self, index: int, info: bytes) -> None:
        """Ray restarted worker `index`; it restored its dialogs and listens again."""
        if 0 <= index < len(self.info):
            self.info[index] = _unpack(info)

    def _keep_snapshots(self, index: int, payload: list[Any]) -> None:
        taken, snapshots, dropped, *rest = payload
        if rest and rest[0]:  # everything the worker has: what was kept of it goes
            self.replicas.pop(index, None)
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

    def plane_statistics(self) -> dict[str, int]:
        """What the workers sent the controller so far: batches, and in them events, links
        and dialog snapshots (for tests and tools: none of it should grow per call)."""
        return {k: self.received[k] for k in ("batches", "events", "links", "snapshots")}

    def replicated(self, index: int) -> list[dict[str, Any]]:
        """The snapshots kept of worker `index`'s dialogs, decoded (`Dialog.snapshot`
        dicts), for tests and tools."""
        return [_unpack(snapshot) for _, snapshot, _ in self.replicas.get(index, {}).values()]

    async def reload_certificates(self) -> bool:
        """Every worker reads its `[tls]` files again; False when any could not (those keep
        their old ones). A worker that is down reads the files when it starts again."""
        replies = await self._fan_out(lambda w: w.reload_certificates.remote())
        return all(bool(r) for r in replies)

    async def stop(self) -> None:
        """Close every worker's sockets and the event sinks; the actors stay until killed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(w.stop.remote() for w in self.workers), return_exceptions=True),
                5.0,
            )
        await self._kill_workers()
        self._python_sinks.clear()
        self._subscriptions.clear()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(internal_kv._internal_kv_del, PLANE_KEY,
                                    namespace=NAMESPACE)

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
        # A Call-ID (`--mode callid`) or a Replaces: the owner of the call, or of the
        # replaced call and the worker whose attended REFER awaits it, may be any other (a
        # worker that has no such call does nothing with it).
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
                        await_ref(self.workers[target].remote_calls.remote(_pack(batch))),
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
        (where it was found last, the dialog id's prefix), then all the others at once."""
        tried: set[int] = set()
        for hint in hints:
            if hint is None or hint in tried or not 0 <= hint < len(self.workers):
                continue
            tried.add(hint)
            if await self._ask(hint, lambda w: w.find.remote(key)):
                _remember(self._located, key, hint)
                return hint
        rest = [i for i in range(len(self.workers)) if i not in tried]
        found = await asyncio.gather(
            *(self._ask(i, lambda w: w.find.remote(key)) for i in rest), return_exceptions=True)
        for index, answer in zip(rest, found, strict=True):
            if answer is True:
                _remember(self._located, key, index)
                return index
        self._located.pop(key, None)
        return None

    # -- call operations -----------------------------------------------------------------------

    async def operate(self, op: Operation | bytes) -> None:
        """Carry out a call operation on the worker that owns its dialog: a value of
        `sip.operations` (what the Python API's `call_transfer`, `call_hold`, ... make), or
        one `codec.pack_operation` packed (the driver's: the values do not pickle)."""
        if isinstance(op, bytes):
            op = unpack_operation(op)
        await self._started()
        if isinstance(op, EndCall):
            index = await self._locate(op.key, [worker_of(op.key), self._located.get(op.key)])
        else:
            index = await self._locate(op.call_id, [self._located.get(op.call_id)])
        if index is None:
            raise CommandError.dialog_not_found()
        if isinstance(op, AttendedTransfer):
            await self._attended_transfer(index, op)
        else:
            await self._operate_on(index, op)

    async def _operate_on(self, index: int, op: Operation) -> None:
        payload = pack_operation(op)
        refused = await self._ask(index, lambda w: w.operate.remote(payload))
        if refused is not None:
            status, reason, detail, field = _unpack(refused)
            raise command_error(Refused(int(status), str(reason), detail, field))

    async def _attended_transfer(self, first: int, op: AttendedTransfer) -> None:
        """On the worker of the first call when both calls are there (or the second is
        nowhere), across the two workers otherwise."""
        callid, transfer_callid = op.call_id, op.transfer_callid
        second = await self._locate(transfer_callid, [self._located.get(transfer_callid)])
        if second is None and op.transfer_leg is not None:
            raise CommandError(NOT_FOUND, "Transfer dialog not found")
        if second is None or second == first:
            await self._operate_on(first, op)
            return
        if op.transfer_leg is not None:
            # The second call's worker gives the Replaces tags; the first call's worker then
            # REFERs with them as for a call it does not track (spec §3.2 recipe).
            transfer_leg = op.transfer_leg
            found = _unpack(await self._ask(
                second, lambda w: w.replaces_for.remote(transfer_callid, transfer_leg)))
            if found is None:
                raise CommandError(NOT_FOUND, "Transfer dialog not found")
            to_tag, from_tag, default_destination = found
            op = AttendedTransfer(callid, op.leg, transfer_callid, None,
                                  op.destination or default_destination, from_tag, to_tag,
                                  op.operation_id)
        key = f"replaces:{transfer_callid};{op.to_tag};{op.from_tag}"
        # Both before the REFER goes: the transferee may send its INVITE at once.
        previous = _unpack(await self._ask(
            second, lambda w: w.expect_replacing.remote(transfer_callid, callid)))
        self._attended[callid] = (key, second)
        try:
            # Its worker tells nobody else when the replacing INVITE reaches it: the
            # controller links the second call from the first one's events.
            await self._ask(first, lambda w: w.follow.remote(callid))
            await self._operate_on(first, op)
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

    async def list_page(self, after: int | None, limit: int, state: int | None = None,
                        from_user: str | None = None, to_user: str | None = None
                        ) -> tuple[list[dict[str, Any]], int | None]:
        """`ControlApi.list_page` over the workers: a dialog's number starts with its
        worker's index, so the workers are asked in index order, from the cursor's on, each
        for what the page still lacks; the first that has more gives the next cursor."""
        await self._started()
        start = 0 if after is None else max(0, after >> 32)
        shown: list[dict[str, Any]] = []
        for index in range(start, len(self.workers)):
            want = limit - len(shown)
            dialogs, more = _unpack(await self._ask(
                index, functools.partial(_page_of, after=after, limit=max(want, 1),
                                         state=state, from_user=from_user, to_user=to_user)))
            if want == 0:  # only asked whether a later worker has any: it does, or not
                if dialogs:
                    return shown, int(shown[-1]["db_id"]) if shown else None
                continue
            shown.extend(dialogs)
            if more is not None:
                return shown, int(more)
        return shown, None

    async def capture(self, on: bool | None) -> list[dict[str, Any]]:
        """Every worker's message capture (the console's ladders): leased again (True),
        stopped (False) or only looked at (None); each worker's view."""
        await self._started()
        replies = await self._fan_out(lambda w: w.capture.remote(on))
        return [_unpack(reply) for reply in replies]

    async def captured(self, callid: str) -> list[dict[str, Any]] | None:
        """The messages captured of the call `callid` by the worker that carried it: the
        one remembered for that Call-ID first, then (a call that ended, or one not located
        yet) every other."""
        _check_str("callid", callid)
        await self._started()
        owner = self._located.get(callid)
        if owner is not None and 0 <= owner < len(self.workers):
            found = _unpack(await self._ask(owner, lambda w: w.captured.remote(callid)))
            if found is not None:
                return list(found)
        others = [w for i, w in enumerate(self.workers) if i != owner]
        replies = await asyncio.gather(
            *(asyncio.wait_for(w.captured.remote(callid), CALL_TIMEOUT) for w in others),
            return_exceptions=True)
        for reply in replies:
            if isinstance(reply, bytes) and (found := _unpack(reply)) is not None:
                return list(found)
        return None

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
        total["evi:dropped_events"] = (total.get("evi:dropped_events", 0)
                                       + self._python_sinks.dropped())
        # Every worker has every subscription: counted once, as in one process.
        wall = time.time()
        total["evi:subscriptions"] = (
            len(self.spec.subscriptions)
            + sum(1 for t in self._subscriptions.values() if t > wall)
            + self._python_sinks.subscriptions(time.monotonic()))
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
            self._python_sinks.subscribe(event, socket, expire)
            await self._save_plane()
            if self._python_sinks.wanted(time.monotonic()) != self._forwarded:
                await self._push_forward()
            return
        try:
            address = parse_sink(socket)
        except ValueError as exc:
            raise CommandError.invalid_params(str(exc)) from None
        if address.webhook and not self.spec.config.events.webhook_secret and expire != 0:
            raise CommandError.invalid_params(
                f"{address}: webhooks need [events] webhook_secret")
        await self._started()
        sink = str(address)
        key = (event, sink)
        if expire:
            self._subscriptions[key] = time.time() + expire
        else:
            self._subscriptions.pop(key, None)
        # Kept before the workers are told: a worker that (re)starts meanwhile asks for it.
        await self._save_plane()
        try:
            await self._fan_out(lambda w: w.subscribe.remote(event, sink, expire))
        except ray.exceptions.RayTaskError as exc:
            self._subscriptions.pop(key, None)
            await self._save_plane()
            raise CommandError.invalid_params(str(exc.cause)) from None

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        """`ControlApi.subscribe_event`: the same as `subscribe`."""
        await self.subscribe(event, socket, expire)

