"""Helpers of the Ray runtime suite (importable as `tests.cluster.ray_service`).

- `free_port_block(n)`: a base port with base .. base+n-1 free (worker i listens on base + i);
- `InProcessService`: `switchboard.cluster.ray_runtime.serve` run in this process (the test
  process is then the Ray driver), in a uvloop on a background thread, so that synchronous
  tests can drive SIPp while the MI server and the driver's API keep running;
- `import_ray()`: the ray module, or a failure when it is not installed;
- `kill_controller()`: remove a detached controller left behind by a failed test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

HOST = "127.0.0.1"
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
    """Remove a switchboard controller left in the cluster (its workers go with it)."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor("controller", namespace=NAMESPACE))


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are free for UDP and TCP right now.

    Taken below the kernel's ephemeral range (where `harness.free_port` and every port-0 bind
    land), so nothing else in the session can be handed one of them.
    """
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {HOST}")


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
