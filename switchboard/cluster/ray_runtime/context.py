"""What every actor of the `ray` runtime shares: what it asks Ray about itself (was it
restarted, which address its node has), how it awaits another actor, and the bounds it keeps
to when it does (how long a call may take, how many events may wait).

Holds no state and no actor.
"""

from __future__ import annotations

import warnings
from typing import Any, Final

import ray
import ray.util

NAMESPACE: Final = "switchboard"
CONTROLLER: Final = "controller"
# Worker i is the detached actor of this name (so a restarted controller finds it again).
WORKER_NAME: Final = "worker-{index}"

# How long a management call waits for a worker.
CALL_TIMEOUT: Final = 30.0
# Events a worker keeps while the controller is slow or away; more are dropped and counted.
MAX_PENDING_EVENTS: Final = 100_000


def worker_name(index: int) -> str:
    return WORKER_NAME.format(index=index)


def restarted() -> bool:
    """Whether Ray restarted the actor this runs in (it re-runs `__init__` with the same
    arguments)."""
    with warnings.catch_warnings():
        # The property reads Ray's own deprecated `actor_id`; the warning is not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def node_ip() -> str:
    """The address this node joined the cluster with (`ray start --node-ip-address`)."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
            return str(node["NodeManagerAddress"])
    return str(ray.util.get_node_ip_address())


async def await_ref(ref: Any) -> Any:
    """An actor call's answer (its `ObjectRef` awaited) as a coroutine."""
    return await ref

