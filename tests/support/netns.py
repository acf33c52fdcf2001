"""A private network namespace with only `lo`, for the calling thread, for one test.

`private_network()` moves the calling thread into a new network namespace (unshare(2) with
CLONE_NEWNET, what `unshare -n` does), brings `lo` up (`ip link set lo up`) and, on leaving,
moves the thread back with setns(2) to the namespace it came from. While inside, every socket
the thread opens and every process or thread it starts lives in the new namespace: a
subprocess inherits the namespace of the thread that forks it, and a socket belongs for its
whole life to the namespace it was created in. Those processes stay there after the thread
has left; the test stops them itself. Other threads of the process are not moved.

Needs CAP_SYS_ADMIN (root, as the test command runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000  # <sched.h>

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)} (a private network namespace "
                             "needs CAP_SYS_ADMIN: run the tests as root, as scripts/test does)")


def interfaces() -> list[str]:
    """The network interfaces of the calling thread's namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                         text=True, timeout=10).stdout
    return [line.split(":", 2)[1].strip().split("@", 1)[0] for line in out.splitlines()]


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Run the block in a new network namespace whose only interface is `lo`, up."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True,
                           timeout=10)
            yield
        finally:
            _check(_libc.setns(original, CLONE_NEWNET), "setns back to the original namespace")
    finally:
        os.close(original)

