"""Helpers of the Ray runtime suite (importable as `tests.cluster.ray_service`).

- `InProcessService`: `switchboard.cluster.ray_runtime.serve` run in this process (the test
  process is then the Ray driver), in a uvloop on a background thread, so that synchronous
  tests can drive SIPp while the MI server and the driver's API keep running;
- `import_ray()`: the ray module, or a failure when it is not installed;
- `kill_controller()`: remove a detached controller left behind by a failed test;
- `Service` / `start_service(workers)`: a running `serve` with N workers on ports base + i and
  the MI (the `service` fixture of conftest.py); `start_service(workers, shared_port=True)`:
  every worker on the base port (docs/ray.md "One address for every worker"), with `ws=True`
  on a `ws:` port of the service's as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import uvloop

from switchboard.config import Config, apply_overrides
from switchboard.mi.client import call as mi_call
from tests.support.ports import HOST, free_port, free_port_block

NAMESPACE = "switchboard"

T = TypeVar("T")


def import_ray() -> Any:
    """The `ray` module; without it the suite fails (scripts/test installs the `ray` extra,
    so nothing is silently skipped)."""
    try:
        import ray
    except ImportError:
        message = "ray not installed (pip install -e '.[ray]', or run scripts/test)"
        pytest.fail(message, pytrace=False)  # never a silent skip: scripts/test installs it
    return ray


def kill_controller() -> None:
    """Remove a switchboard controller left in the cluster, its (detached) workers and the
    lease of the driver that started it."""
    import ray

    for name in ("controller", "driver", *(f"worker-{i}" for i in range(8))):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))


class InProcessService:
    """An event loop on a thread, and what runs in it; `run` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="ray-service-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class Service:
    """A switchboard on Ray run by this process: worker i listens on base + i (UDP and TCP),
    or every worker on base when they share the port."""

    sb: Any  # switchboard.cluster.ray_runtime.RaySwitchboard (importing it needs ray)
    runner: InProcessService
    base: int
    shared_port: bool = False
    ws_port: int = 0  # its `ws:` listener's (0: none)

    def port(self, worker: int) -> int:
        return self.base if self.shared_port else self.base + worker

    def mi(self, method: str, **params: Any) -> Any:
        """Call the MI over HTTP, as `switchboard mi` does; the result (MIClientError on an
        error answer)."""
        assert self.sb.mi is not None
        return mi_call(self.sb.mi.url, method, params or None)


# What the service signs its webhook requests with (tests subscribe webhooks at run time).
WEBHOOK_SECRET = "ray-webhook-secret"


def service_config(base: int, mi_port: int, workers: int, shared_port: bool = False,
                   store: str = "", ws_port: int = 0) -> Config:
    config = apply_overrides(
        Config(),
        listen=[f"udp:{HOST}:{base}", f"tcp:{HOST}:{base}",
                *([f"ws:{HOST}:{ws_port}"] if ws_port else [])],
        mi_http=f"{HOST}:{mi_port}",
        runtime="ray",
        workers=workers,
    )
    return dataclasses.replace(
        config, events=dataclasses.replace(config.events, webhook_secret=WEBHOOK_SECRET),
        runtime=dataclasses.replace(config.runtime, shared_port=shared_port),
        dialog=dataclasses.replace(config.dialog, store=store))


def start_service(workers: int, shared_port: bool = False, store: str = "",
                  ws: bool = False) -> Service:
    """`serve` in this process (the Ray driver) on a fresh port block (one port when the
    workers share it), with `store` as its `[dialog] store` and, with `ws`, a WebSocket
    listener too; `stop_service` ends it."""
    from switchboard.cluster.ray_runtime import serve

    runner = InProcessService()
    base = free_port_block(1 if shared_port else workers)
    ws_port = free_port("tcp") if ws else 0
    try:
        sb = runner.run(serve(service_config(base, free_port("tcp"), workers, shared_port,
                                             store, ws_port)),
                        timeout=120)
    except BaseException:
        runner.close()
        kill_controller()
        raise
    return Service(sb, runner, base, shared_port, ws_port)


def stop_service(service: Service) -> None:
    try:
        service.runner.run(service.sb.stop(), timeout=30)
    finally:
        service.runner.close()
        kill_controller()


def wait_controller_gone(timeout: float = 10.0) -> None:
    """Until the named controller is gone (a `serve` that stopped removes it)."""
    ray = import_ray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get_actor("controller", namespace="switchboard")
        except ValueError:
            return
        assert time.monotonic() < deadline, "the controller outlived `serve`"
        time.sleep(0.2)


def until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check` until it answers something true; an exception counts as "not yet" (the
    controller or a worker restarting, Redis away)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s ({last!r})"
        time.sleep(0.2)
