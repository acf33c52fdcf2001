"""Loopback ports for tests and the bench: picking free ones, and waiting until one is bound.

All traffic stays on 127.0.0.1; ports are chosen at run time, never fixed. `free_port` hands
out kernel-picked ports (never the same one twice in a process); `free_port_block` finds a run
of consecutive ones below the kernel's ephemeral range (worker i of a cluster on base + i);
`wait_listening` reads /proc/net instead of probing, so it cannot race the program that binds.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path
from typing import Literal

HOST = "127.0.0.1"

PortKind = Literal["udp", "tcp", "both"]

_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port(kind: PortKind = "udp") -> int:
    """A port on 127.0.0.1 that is free right now for `kind` ("udp", "tcp" or "both").

    "both" means free for UDP and TCP at once (a server listening on udp:P and tcp:P).
    A port is never handed out twice in one test session, so ports picked one after the other
    cannot collide even before anything binds them.
    """
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be 'udp', 'tcp' or 'both', not {kind!r}")
    first = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.socket(socket.AF_INET, first))
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
            if kind == "both":
                t = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
        with _ports_lock:
            if port in _handed_out:
                continue
            _handed_out.add(port)
        return port
    raise RuntimeError(f"no free {kind} port found on {HOST}")


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

    Taken below the kernel's ephemeral range (where `free_port` and every port-0 bind land),
    so nothing else in the session can be handed one of them.
    """
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {HOST}")


def _proc_net_ports(kind: Literal["udp", "tcp"]) -> set[int]:
    """Local ports bound on this machine (UDP) or listening (TCP), read from /proc/net."""
    ports: set[int] = set()
    for name in (kind, kind + "6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            local, state = fields[1], fields[3]
            if kind == "tcp" and state != "0A":  # TCP_LISTEN
                continue
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port: int, kind: PortKind = "udp", timeout: float = 10.0) -> None:
    """Wait until something on this machine listens on `port` without touching the port.

    Reads /proc/net (Linux) instead of probing, so it cannot race the program that is about
    to bind the port. Without /proc it just waits a moment.
    """
    kinds: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp") if kind == "both" else (kind,)
    if not Path("/proc/net/udp").exists():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while True:
        if all(port in _proc_net_ports(k) for k in kinds):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {kind} port {port} after {timeout} s")
        time.sleep(0.02)
