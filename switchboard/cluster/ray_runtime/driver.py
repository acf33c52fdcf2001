"""The driver of the `ray` runtime: what `serve` starts and returns, in the calling process.

`serve(config)` starts Ray (or joins the cluster at `runtime.ray_address`), creates the
controller actor and waits until its workers are bound; when a controller runs already and
the driver that started it is gone (killed), it attaches to that one instead, so that its
calls, dialogs and subscriptions carry on. Every driver holds a lease (`DriverLease`, a
named actor that dies with the driver's job): while it lives, another `serve` refuses.
What it returns, `RaySwitchboard`, implements `ControlApi` by calling the controller (a
`CommandError` the controller raised comes back as one) and runs the MI HTTP server (with
`/metrics` over every worker's statistics), so `switchboard mi` works as with the local
runtime. Stopping it removes the controller and its workers, and leaves Ray if `serve`
started it.

Talks to the controller only through its actor handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions

from ...api import SERVER_ERROR, CallOperations, CommandError, EventObserver, Unwatch
from ...config import Config
from ...metrics import Metrics, SetupTimes
from ...mi.http import MIServer, start_mi_server
from ...readout import unpack as _unpack
from ...sip.operations import Operation
from ...sip.wire import Address
from .capture import WorkersCapture
from .codec import ServiceSpec, pack_operation, raise_start_error
from .context import CONTROLLER, NAMESPACE, await_ref
from .controller import START_TIMEOUT, Controller
from .watch import RelayWatch

if TYPE_CHECKING:
    from ...capture import CaptureControl

# The runtime logs under one name, its package's (what a log filter names).
log = logging.getLogger(__package__)

__all__ = ["CONTROLLER", "NAMESPACE", "RaySwitchboard", "controller_handle", "serve"]

# The name of the lease the running driver holds.
DRIVER = "driver"


class DriverLease:
    """Held by the running `serve` (a named actor of its job, not detached: Ray removes it
    when that process ends, however it ends)."""

    def alive(self) -> bool:
        return True


def controller_handle() -> Any:
    """The running controller's handle (ValueError when there is none)."""
    return ray.get_actor(CONTROLLER, namespace=NAMESPACE)


class RaySwitchboard(CallOperations):
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
        self._sighup = False
        self._reloads: set[asyncio.Task[bool]] = set()
        self._watch = RelayWatch(self._subscribe_python)
        self._capture = WorkersCapture(controller, self._call)
        self.lease: Any = None

    @property
    def listeners(self) -> list[Address]:
        """Every address some worker listens on, once (the workers of a node may share
        theirs), in worker order."""
        found = (Address(t, h, p) for w in self.workers for t, h, p in w["listeners"])
        return list(dict.fromkeys(found))

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

    async def reload_certificates(self) -> bool:
        """Every worker reads the `[tls]` files again, as SIGHUP does; False when some did
        not load them (those keep the old ones). Calls and connections stay up."""
        done = bool(await self._call(self.controller.reload_certificates.remote()))
        if done:
            log.info("TLS certificates reloaded on every worker")
        else:
            log.error("TLS files not reloaded on some worker, the old ones stay in use there")
        return done

    def watch_sighup(self) -> None:
        """SIGHUP has the workers read their certificates again (only where this loop may
        own signals: the main thread of `switchboard serve`)."""
        loop = asyncio.get_running_loop()

        def reload() -> None:
            task = loop.create_task(self.reload_certificates())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, reload)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            log.debug("no SIGHUP certificate reload here: %s", exc)
            return
        self._sighup = True

    async def stop(self) -> None:
        """Stop the MI, the workers and the controller; leave Ray if `serve` started it."""
        if self._stopped:
            return
        self._stopped = True
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self.mi is not None:
            await self.mi.close()
        await self._watch.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(await_ref(self.controller.stop.remote()), 10.0)
        with contextlib.suppress(Exception):
            ray.kill(self.controller)
        if self.lease is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.lease)
            self.lease = None
        if self._owns_ray:
            ray.shutdown()

    async def readiness(self) -> list[str]:
        """What keeps the service from taking calls (`/readyz`); empty when it is ready."""
        if self._stopped:
            return ["stopping"]
        try:
            problems: list[str] = await asyncio.wait_for(
                await_ref(self.controller.health.remote()), 5.0)
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

    async def list_page(self, after: int | None, limit: int, state: int | None = None,
                        from_user: str | None = None, to_user: str | None = None
                        ) -> tuple[list[dict[str, Any]], int | None]:
        dialogs, more = await self._call(
            self.controller.list_page.remote(after, limit, state, from_user, to_user))
        return list(dialogs), more

    async def operate(self, op: Operation) -> None:
        await self._call(self.controller.operate.remote(pack_operation(op)))

    async def statistics(self) -> dict[str, int]:
        stats: dict[str, int] = await self._call(self.controller.statistics.remote())
        return stats

    async def subscribe_event(self, event: str, socket: str, expire: int) -> None:
        await self._call(self.controller.subscribe_event.remote(event, socket, expire))

    async def _subscribe_python(self, event: str, target: Any, expire: int) -> None:
        await self._call(self.controller.subscribe.remote(event, target, expire))

    async def watch(self, events: Iterable[str], observer: EventObserver) -> Unwatch:
        """Through a relay actor the controller sends the events to (`watch.py` says why)."""
        return await self._watch.watch(events, observer)

    def capture(self) -> CaptureControl | None:
        """Each worker's own capture, through the controller (`capture.py`)."""
        return self._capture

    def uptime_seconds(self) -> float:
        return max(0.0, time.time() - self._started_wall)

    def started_at(self) -> float:
        return self._started_wall



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
        lease_class: Any = ray.remote(num_cpus=0)(DriverLease)
        try:
            lease = lease_class.options(name=DRIVER, namespace=NAMESPACE).remote()
        except ValueError:
            raise OSError(errno.EEXIST, (
                f"a switchboard controller already runs in Ray namespace {NAMESPACE!r}, "
                f"and its `serve` too; stop that one first (SIGTERM), or "
                f"ray.kill(ray.get_actor({CONTROLLER!r}, namespace={NAMESPACE!r}))"
            )) from None
        spec = ServiceSpec.from_config(config).pack()
        created = False
        try:
            controller = controller_handle()
        except ValueError:
            created = True
            remote_controller: Any = ray.remote(Controller)
            controller = remote_controller.options(
                name=CONTROLLER,
                namespace=NAMESPACE,
                lifetime="detached",
                max_restarts=-1,
                num_cpus=0,
            ).remote(spec)
        else:
            # Its `serve` was killed: the controller and the workers served on; carry on
            # with them (their configuration, not this one).
            running = await await_ref(controller.service_spec.remote())
            log.warning("attached to the running switchboard controller in Ray namespace "
                        "%r%s", NAMESPACE,
                        "" if running == spec else
                        " (it keeps its own configuration, which differs from this one "
                        "but for the MI)", extra={"event": "controller_attached"})
        try:
            ready = _unpack(await asyncio.wait_for(
                await_ref(controller.ready.remote()), START_TIMEOUT + 30))
            if "error" in ready:
                raise_start_error(ready["error"])
            sb = RaySwitchboard(config, controller, ready, owns_ray)
            await sb.start_mi()
            if any(sock.transport in ("tls", "wss") for sock in config.listen.sockets):
                sb.watch_sighup()
        except BaseException:
            with contextlib.suppress(Exception):
                if created:
                    ray.kill(controller)
                ray.kill(lease)
            raise
        sb.lease = lease
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    log.info("switchboard on Ray: %d workers, controller %r in namespace %r",
             len(sb.workers), CONTROLLER, NAMESPACE)
    return sb
