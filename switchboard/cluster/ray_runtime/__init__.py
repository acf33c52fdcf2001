"""The `ray` runtime: switchboard as a named, detached controller actor and N worker actors.

`serve(config)` starts Ray (or joins the cluster at `runtime.ray_address`) and creates the
`Controller` actor ("controller" in namespace "switchboard", detached, restarted by Ray), which
places the `WorkerActor`s (named, detached). Each worker runs the local runtime's worker on
its own sockets, owns the dialogs whose INVITE it received and sends its events to their
sinks itself; the controller is the control plane (nothing per call) and the Python API; the
driver (the process that called `serve`) serves the MI (docs/ray.md).

One role a module:
- `codec`: what the actors send each other, as msgpack (the service spec, start errors, call
  operations, the kinds of a worker's batch items);
- `context`: what every actor asks Ray about itself, and the bounds on calls between actors;
- `worker`: the worker actor (SIP sockets, proxy core, dialogs and their snapshots or its
  dialog store, its event sinks);
- `sinks`: Python subscribers (actor handles, callables) of the events;
- `controller`: the controller actor (subscriptions, routing, calls linked across workers,
  fan-out, Python subscribers, snapshots kept for restarted workers without a store);
- `driver`: `serve` and what it returns (`ControlApi` over the controller, the MI).

Only this package imports `ray` (DESIGN.md §2).
"""

from .codec import ANSWER as ANSWER
from .codec import LINK as LINK
from .codec import SNAPSHOTS as SNAPSHOTS
from .codec import ServiceSpec as ServiceSpec
from .context import CALL_TIMEOUT as CALL_TIMEOUT
from .context import MAX_PENDING_EVENTS as MAX_PENDING_EVENTS
from .controller import MAX_ROUTED as MAX_ROUTED
from .controller import START_TIMEOUT as START_TIMEOUT
from .controller import Controller as Controller
from .driver import CONTROLLER as CONTROLLER
from .driver import NAMESPACE as NAMESPACE
from .driver import RaySwitchboard as RaySwitchboard
from .driver import controller_handle as controller_handle
from .driver import serve as serve
from .sinks import ACTOR_SINK_METHOD as ACTOR_SINK_METHOD
from .worker import REBIND_TIMEOUT as REBIND_TIMEOUT
from .worker import SNAPSHOT_INTERVAL as SNAPSHOT_INTERVAL
from .worker import WorkerActor as WorkerActor
