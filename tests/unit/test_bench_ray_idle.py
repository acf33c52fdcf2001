"""bench/ray_idle.py's reading of a process's threads, on this process (no Ray)."""

from __future__ import annotations

import ctypes
import os
import threading
import time

from bench.ray_idle import idle_ms_per_s, thread_times


def test_each_thread_is_read_under_its_name() -> None:
    stop = threading.Event()

    def spin() -> None:
        # The kernel's name of the thread, as Ray's C++ threads set theirs (PR_SET_NAME).
        ctypes.CDLL(None).prctl(15, b"bench-spinner", 0, 0, 0)
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, name="bench-spinner")
    worker.start()
    try:
        time.sleep(0.05)  # long enough for it to be named
        assert "bench-spinner" in {name for name, _ in thread_times(os.getpid()).values()}
        threads = idle_ms_per_s(os.getpid(), 0.2)
    finally:
        stop.set()
        worker.join()
    assert threads["bench-spinner"] > 0
    assert all(ms >= 0 for ms in threads.values())
