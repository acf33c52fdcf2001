"""The ceilings of the parts a Ray deployment shares between its workers, each measured alone
(docs/ray.md, "Scaling on paper").

`python -m bench.ceilings [--events 20000] [--ops 2000] [--in-flight 16] [--messages 20000]`

1. `bus_to_sink`: one event bus (`actors/eventbus.py`) with one `udp:` subscriber, in this
   process, fed E_DLG_STATE_CHANGED events as fast as it takes them: events/s and CPU µs per
   event of the event loop's thread (what a worker pays per event it sends to its
   subscribers); another process counts what arrives.
2. `controller_events`: the events that still pass the controller, those a Python
   subscriber wants: the controller of `serve --runtime ray` (2 workers behind one address,
   a private Ray in this process) fed what a worker forwards it (`publish`, msgpack batches
   of 1, 16 and 128 events, a few batches in flight), toward one actor subscriber: events/s
   it absorbs and the controller process's CPU per event.
3. `controller_ops`: with one held call on one worker (SIPp parties, `callops:hold` once),
   `call_hold` of that call again — refused, "both legs on hold", after the whole path
   (controller → the owner found through the directory → its core → back), no SIP sent —
   and `list_dialogs` (every worker asked), `--in-flight` at a time from this driver:
   operations/s, and the controller's and the workers' CPU per operation.
4. `handoff`: `bench/shared_port.py`'s per-message costs: reading a message's owner, and
   handing it from one worker's channel to another's (both ends).

CPU comes from /proc (every thread of the process). Prints what it measured and writes it as
JSON to bench/results/ (`--out`). Runs the compiled core when it is built (see
`switchboard.BUILD` in the output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# A private Ray on loopback only (as bench/_ray_serve.py): set before `ray` is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STATE_EVENT = "E_DLG_STATE_CHANGED"


def _state_event(n: int, new_state: int) -> dict[str, Any]:
    """What a worker raises when a dialog changes state (`events/opensips.py`)."""
    return {"id": f"0.{n:x}", "db_id": n, "callid": f"ceiling-{n}@{HOST}",
            "from_tag": f"from{n}", "to_tag": f"to{n}", "old_state": new_state - 1,
            "new_state": new_state}


def _events(count: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` events, dialogs confirmed then ended by pairs."""
    return [(STATE_EVENT, _state_event(n // 2, 4 + n % 2)) for n in range(count)]


def _cpu(pid: int) -> float:
    from .proc import cpu_seconds

    return cpu_seconds([pid])


# -- 1. one event bus to one udp: sink ---------------------------------------------------------


# A subscriber in its own process (its reading must not share this one's CPU or GIL): prints
# its port, then how many datagrams it got once `argv[1]` came or none came for 5 s.
_COUNTER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(5)
want, got = int(sys.argv[1]), 0
while got < want:
    try:
        s.recv(65535)
    except OSError:
        break
    got += 1
print(got, flush=True)
"""


async def bus_to_sink(count: int) -> dict[str, Any]:
    """CPU of this process's event loop thread (where the bus and its sink run) per event,
    and events/s from the first publish to the last datagram counted."""
    from switchboard.actors.eventbus import EventBus

    counter = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _COUNTER, str(count), stdout=asyncio.subprocess.PIPE)
    assert counter.stdout is not None
    port = int(await counter.stdout.readline())
    bus = EventBus()
    try:
        await bus.subscribe(STATE_EVENT, f"udp:{HOST}:{port}", 3600)
        events = _events(count)
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        for start in range(0, count, 256):
            for event, params in events[start:start + 256]:
                bus.publish(event, params)
            await asyncio.sleep(0)  # the bus's task sends between bursts
        got = int(await asyncio.wait_for(counter.stdout.readline(), 120))
        # The loop's CPU up to the last send; the wall time up to the last datagram read.
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        dropped = bus.statistics()["evi:dropped_events"]
    finally:
        await bus.close()
        if counter.returncode is None:
            counter.kill()
        await counter.wait()
    return {"events": count, "received": got, "dropped": dropped,
            "events_per_s": round(got / wall), "cpu_us_per_event": round(cpu * 1e6 / count, 2)}


# -- 2 and 3: the controller of a running serve ---------------------------------------------------


class RayService:
    """`serve --runtime ray` with 2 workers behind one address, on a private Ray started by
    this process (which is its driver)."""

    def __init__(self) -> None:
        self.sb: Any = None
        self.port = 0

    async def __aenter__(self) -> RayService:
        import ray

        from switchboard.cluster.ray_runtime import serve
        from switchboard.config import Config, apply_overrides
        from tests.support.ports import free_port_block

        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved) if p)
        ray.init(address="local", num_cpus=int(os.environ.get("BENCH_RAY_CPUS") or 2),
                 include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                 _node_ip_address=HOST, logging_level="WARNING", log_to_driver=False)
        self.port = free_port_block(1)
        config = apply_overrides(Config(), listen=[f"udp:{HOST}:{self.port}",
                                                   f"tcp:{HOST}:{self.port}"],
                                 runtime="ray", workers=2)
        self.sb = await serve(config)
        return self

    async def __aexit__(self, *exc: object) -> None:
        import ray

        if self.sb is not None:
            await self.sb.stop()
        if ray.is_initialized():
            ray.shutdown()

    @property
    def controller(self) -> Any:
        return self.sb.controller

    async def pids(self) -> tuple[int, list[int]]:
        """The controller's process and the workers' (by index)."""
        pid = await self.controller.__ray_call__.remote(lambda _self: os.getpid())
        workers = [int(w["pid"]) for w in await self.controller.workers_info.remote()]
        return int(pid), workers


class Counter:
    """A Python subscriber (an actor handle given to `subscribe`): counts the events the
    controller hands it, in batches (`on_events`)."""

    def __init__(self) -> None:
        self.count = 0

    def on_events(self, events: list[Any]) -> None:
        self.count += len(events)

    def seen(self) -> int:
        return self.count


async def controller_events(service: RayService, count: int,
                            batches: tuple[int, ...] = (1, 16, 128),
                            in_flight: int = 4) -> dict[str, Any]:
    """The events that still go through the controller: those a Python subscriber (an
    actor) wants, which the workers forward to it in their batches (`publish`)."""
    import ray

    from switchboard.readout import pack

    controller = service.controller
    pid, _ = await service.pids()
    counter: Any = ray.remote(num_cpus=0)(Counter).remote()
    out: dict[str, Any] = {}
    await controller.subscribe.remote(STATE_EVENT, counter, 3600)
    try:
        for size in batches:
            total = count - count % size
            events = _events(total)
            payloads = [pack([list(e) for e in events[i:i + size]])
                        for i in range(0, total, size)]
            seen0 = await counter.seen.remote()
            wall0, cpu0 = time.perf_counter(), _cpu(pid)
            pending: set[Any] = set()
            for payload in payloads:
                pending.add(asyncio.ensure_future(_await(controller.publish.remote(0, payload))))
                if len(pending) >= in_flight:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending)
            absorbed = time.perf_counter() - wall0
            deadline = time.monotonic() + 60
            while (got := await counter.seen.remote() - seen0) < total \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            wall, cpu = time.perf_counter() - wall0, _cpu(pid) - cpu0
            out[f"batch_{size}"] = {
                "events": total, "received": got,
                "absorbed_events_per_s": round(total / absorbed),
                "delivered_events_per_s": round(got / wall),
                "controller_cpu_us_per_event": round(cpu * 1e6 / total, 2)}
            print(f"  controller events, batches of {size}: {out[f'batch_{size}']}", flush=True)
    finally:
        await controller.subscribe.remote(STATE_EVENT, counter, 0)
    return out


async def _await(ref: Any) -> Any:
    return await ref


async def _operations(make: Any, count: int, in_flight: int, pids: list[int]
                      ) -> dict[str, Any]:
    """`count` calls of `make()` (an awaitable each), `in_flight` at a time: operations/s
    and CPU per operation of each process of `pids`."""
    from switchboard.api import CommandError

    refused: dict[str, int] = {}

    async def one() -> None:
        try:
            await make()
        except CommandError as exc:
            why = f"{exc.code} {exc.message}"
            refused[why] = refused.get(why, 0) + 1

    before = [_cpu(p) for p in pids]
    wall0 = time.perf_counter()
    pending: set[Any] = set()
    for _ in range(count):
        pending.add(asyncio.ensure_future(one()))
        if len(pending) >= in_flight:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)
    wall = time.perf_counter() - wall0
    cpu = [_cpu(p) - b for p, b in zip(pids, before, strict=True)]
    return {"operations": count, "refused": refused, "operations_per_s": round(count / wall),
            "cpu_us_per_operation": [round(c * 1e6 / count, 1) for c in cpu]}


async def controller_ops(service: RayService, count: int, in_flight: int, workdir: Path
                         ) -> dict[str, Any]:
    """A held call, then `call_hold` on it (refused) and `list_dialogs`, many at a time."""
    from tests.support.ports import free_port
    from tests.support.sipp import Sipp

    scenarios = REPO / "tests" / "cluster" / "scenarios"
    controller = service.controller
    prefix = f"ceiling-{secrets.token_hex(3)}-"
    callid = f"{prefix}1@{HOST}"
    b = Sipp("b", scenarios / "uas_hold_restart.xml", log_dir=workdir,
             local_port=free_port("udp"), timeout=120, recv_timeout=90, trace_msg=False)
    b.start()
    b.wait_listening()
    a = Sipp("a", scenarios / "uac_hold_restart.xml", log_dir=workdir,
             remote=f"{HOST}:{service.port}", local_port=free_port("udp"),
             keys={"uas_port": b.local_port}, timeout=120, recv_timeout=90, trace_msg=False,
             extra_args=("-cid_str", prefix + "%u@%s"))
    a.start()
    try:
        deadline = time.monotonic() + 20
        while not [d for d in await controller.list_dialogs.remote(callid)
                   if d["state"] == 4]:
            if time.monotonic() > deadline:
                raise RuntimeError("the call to hold was not confirmed within 20 s")
            await asyncio.sleep(0.1)
        await controller.call_hold.remote(callid)
        await asyncio.sleep(1.0)  # both re-INVITEs answered: both legs on hold
        pid, workers = await service.pids()
        pids = [pid, *workers]
        out = {"processes": ["controller", *(f"worker {i}" for i in range(len(workers)))],
               "in_flight": in_flight}
        out["hold_of_a_held_call"] = await _operations(
            lambda: _await(controller.call_hold.remote(callid)), count, in_flight, pids)
        print(f"  call_hold (refused): {out['hold_of_a_held_call']}", flush=True)
        out["list_dialogs"] = await _operations(
            lambda: _await(controller.list_dialogs.remote()), count, in_flight, pids)
        print(f"  list_dialogs: {out['list_dialogs']}", flush=True)
        if sum(out["hold_of_a_held_call"]["refused"].values()) != count:
            out["warning"] = "some holds were not refused: was the call on hold?"
        return out
    finally:
        a.kill()
        b.kill()
        for dialog in await controller.list_dialogs.remote(callid):
            await controller.end_dialog.remote(dialog["ID"])


async def _with_ray(args: argparse.Namespace, record: dict[str, Any]) -> None:
    async with RayService() as service:
        await asyncio.sleep(3.0)  # Ray settles after the workers answer
        print("controller_events:", flush=True)
        record["controller_events"] = await controller_events(service, args.events)
        with tempfile.TemporaryDirectory(prefix="bench-ceilings-") as tmp:
            print("controller_ops:", flush=True)
            record["controller_ops"] = await controller_ops(service, args.ops, args.in_flight,
                                                            Path(tmp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="events per measure")
    parser.add_argument("--ops", type=int, default=2000, help="operations per measure")
    parser.add_argument("--in-flight", type=int, default=16,
                        help="operations in flight at a time (default 16)")
    parser.add_argument("--messages", type=int, default=20000,
                        help="messages for the hand-off (default 20000)")
    parser.add_argument("--no-ray", action="store_true", help="only the parts without Ray")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    import uvloop

    import switchboard

    from .proc import host_cpu_times
    from .shared_port import classification_us, handoff_us

    busy0, total0 = host_cpu_times()
    record: dict[str, Any] = {"build": switchboard.BUILD, "cpus": os.cpu_count()}
    record["bus_to_sink"] = uvloop.run(bus_to_sink(args.events))
    print("bus_to_sink:", record["bus_to_sink"], flush=True)
    record["handoff"] = {"classification_us": classification_us(args.messages),
                         **handoff_us(args.messages)}
    print("handoff:", record["handoff"], flush=True)
    if not args.no_ray:
        uvloop.run(_with_ray(args, record))
    busy1, total1 = host_cpu_times()
    record["host_cpu_busy_pct"] = round(100.0 * (busy1 - busy0) / (total1 - total0)
                                        * (os.cpu_count() or 1), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ceilings-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
