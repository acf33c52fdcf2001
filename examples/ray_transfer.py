"""Drive a blind transfer through the controller actor of a switchboard on Ray (issue 5).

With switchboard serving on a Ray cluster (`switchboard serve --runtime ray --ray-address auto
...`), from any machine of the cluster:

    python examples/ray_transfer.py CALL_ID caller sip:carol@example.com

It finds the controller by name (`ray.get_actor("controller", namespace="switchboard")`),
shows the call as `dialog:list` does, subscribes an actor of its own to E_CALL_TRANSFER (an
actor handle is a subscriber as a `udp:`/`tcp:` socket is: it gets the events of every worker,
in batches, through its `on_events` method), asks for the transfer (the parameters and errors
of the MI's `callops:transfer`), and prints the transfer's events until it is over. The new
call the transferee places may reach any worker: the controller links it back to the old one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import ray

from switchboard.api import CommandError

NAMESPACE = "switchboard"
EVENT = "E_CALL_TRANSFER"

Event = tuple[str, dict[str, Any]]


class TransferWatcher:
    """The subscriber: the controller calls `on_events` with (event, params) pairs."""

    def __init__(self) -> None:
        self._events: list[Event] = []

    def on_events(self, events: list[Event]) -> None:
        self._events.extend(events)

    def seen(self) -> list[Event]:
        return list(self._events)


def transfer_over(events: list[dict[str, Any]]) -> bool:
    """Whether a transfer's event stream is complete: it failed, or it succeeded and the
    transferee reported the new call's final answer (a NOTIFY whose status is not 1xx)."""
    states = [e["state"] for e in events]
    reported = any(e["state"] == "notify" and not str(e["status"]).startswith("1")
                   for e in events)
    return "fail" in states or ("ok" in states and reported)


def blind_transfer(callid: str, leg: str, destination: str, *, timeout: float = 30.0,
                   controller: Any = None) -> list[dict[str, Any]]:
    """Transfer `leg` ("caller" or "callee") of the call `callid` to `destination` and return
    the call's E_CALL_TRANSFER params in order, once the transfer is over or after `timeout`
    seconds. Raises `CommandError` as `callops:transfer` refuses (404 for an unknown call...).
    """
    if controller is None:
        controller = ray.get_actor("controller", namespace=NAMESPACE)
    watcher_class: Any = ray.remote(num_cpus=0)(TransferWatcher)
    watcher: Any = watcher_class.remote()
    ray.get(controller.subscribe.remote(EVENT, watcher, 3600))
    try:
        ray.get(controller.call_transfer.remote(callid, leg, destination))
        deadline = time.monotonic() + timeout
        while True:
            seen: list[Event] = ray.get(watcher.seen.remote())
            mine = [params for _, params in seen if params.get("callid") == callid]
            if transfer_over(mine) or time.monotonic() >= deadline:
                return mine
            time.sleep(0.1)
    finally:
        ray.get(controller.subscribe.remote(EVENT, watcher, 0))  # expire 0: unsubscribe
        ray.kill(watcher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("callid", help="Call-ID of the call to transfer")
    parser.add_argument("leg", choices=("caller", "callee"), help="the party to transfer")
    parser.add_argument("destination", help="where it goes, a SIP URI")
    parser.add_argument("--address", default="auto",
                        help="the Ray cluster to join (default: auto, the local `ray start`)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the transfer to finish")
    args = parser.parse_args(argv)

    if not ray.is_initialized():  # a driver already connected (a notebook, a test) goes on
        ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        controller: Any = ray.get_actor("controller", namespace=NAMESPACE)
    except ValueError:
        print("no switchboard runs in this Ray cluster", file=sys.stderr)
        return 1
    dialogs: list[dict[str, Any]] = ray.get(controller.list_dialogs.remote(args.callid))
    for dialog in dialogs:
        print(f"dialog {dialog['ID']} state {dialog['state']}: "
              f"{dialog['from_uri']} -> {dialog['to_uri']}")
    try:
        events = blind_transfer(args.callid, args.leg, args.destination, timeout=args.timeout,
                                controller=controller)
    except CommandError as exc:
        print(f"refused: {exc.code} {exc.message}" + (f" ({exc.data})" if exc.data else ""),
              file=sys.stderr)
        return 1
    for params in events:
        print(json.dumps(params, sort_keys=True))
    succeeded = transfer_over(events) and all(e["state"] != "fail" for e in events)
    return 0 if succeeded else 2


if __name__ == "__main__":
    sys.exit(main())
