"""The memory allocator `serve` runs on: CPython's own, or mimalloc.

CPython's allocator (pymalloc) is the fastest for the proxy's many small objects, but it gives
memory back to the system in whole 1 MiB arenas only, and only once every object in an arena
is gone. After a peak of calls, a few long-lived objects scattered over the arenas keep most
of them: the process's RSS stays near the peak when the calls have hung up. mimalloc gives each
page back as soon as it is free (`MIMALLOC_RESET_DELAY=0`), so the memory of ended calls goes
back to the system; it costs some CPU per call (bench/README.md, "Memory per held dialog").

The choice has to be made before the interpreter starts: `PYTHONMALLOC=malloc` makes CPython
use the C allocator for everything, and `LD_PRELOAD` puts mimalloc in place of the C library's.
So `serve` with `[runtime] allocator = "mimalloc"` executes itself again once with both set —
the same process (PID), the same command line — and the second start finds itself there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

# Set in the environment of the re-executed process: the allocator it was started for.
MARK: Final = "SWITCHBOARD_ALLOCATOR"
INSTALL_HINT: Final = "libmimalloc2.0 (Debian, Ubuntu) or mimalloc"


class AllocatorMissing(RuntimeError):
    """The allocator asked for is not installed on this machine."""


def mimalloc_library() -> str | None:
    """The shared library's name for `LD_PRELOAD` (the dynamic linker finds it), or None."""
    return ctypes.util.find_library("mimalloc")


def environment(library: str, base: dict[str, str]) -> dict[str, str]:
    """`base` with what makes a new CPython process allocate with mimalloc from `library`."""
    env = dict(base)
    env["LD_PRELOAD"] = " ".join(p for p in (library, base.get("LD_PRELOAD", "")) if p)
    env["PYTHONMALLOC"] = "malloc"
    env["MIMALLOC_RESET_DELAY"] = "0"  # give a freed page back at once, not "later" (never, idle)
    env[MARK] = "mimalloc"
    return env


def run_on(allocator: str) -> None:
    """Return when this process allocates with `allocator`; otherwise replace it by the same
    command line started so that it does (this call does not return then)."""
    if allocator == "python" or os.environ.get(MARK) == allocator:
        return
    library = mimalloc_library()
    if library is None:
        raise AllocatorMissing(
            f'[runtime] allocator = "{allocator}": the library is not installed here '
            f"({INSTALL_HINT})")
    # `orig_argv` is the command as started (`python -m switchboard serve …` or the console
    # script); `argv` would have lost the interpreter's own options.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              environment(library, dict(os.environ)))


def active(maps: Path = Path("/proc/self/maps")) -> str:
    """The allocator this process really allocates with: "python" (CPython's own), "mimalloc"
    (CPython hands every allocation to the C allocator, and mimalloc is mapped in its place),
    or "malloc" (the C library's: the preload was asked for but did not load)."""
    if os.environ.get("PYTHONMALLOC") != "malloc":
        return "python"
    try:
        mapped = "mimalloc" in maps.read_text()
    except OSError:
        mapped = False
    return "mimalloc" if mapped else "malloc"


_release: list[Callable[[], None]] | None = None  # found once, on the first give_back


def _releasers() -> list[Callable[[], None]]:
    """What returns free memory to the system here: mimalloc's `mi_collect` where mimalloc
    is loaded, the C library's `malloc_trim` where it has one (glibc)."""
    found: list[Callable[[], None]] = []
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return found
    collect = getattr(process, "mi_collect", None)
    if collect is not None:
        collect.argtypes = [ctypes.c_bool]
        collect.restype = None
        found.append(lambda: collect(True))
    trim = getattr(process, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        found.append(lambda: trim(0))
    return found


def give_back() -> None:
    """Ask the allocators of this process to return the pages they hold free. mimalloc
    gives a page back once it is wholly free, but only when it next allocates or collects;
    the C library keeps the free chunks of its heap below the highest one in use (the
    objects of CPython over 512 bytes live there: datagrams, large tables). CPython's own
    arenas go back by themselves, each once it is empty."""
    global _release
    if _release is None:
        _release = _releasers()
    for release in _release:
        release()
