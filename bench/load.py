"""SIPp load around a running system, for the parts that need calls in the background
(dialogs held, call operations, events, overload, soak).

One SIPp UAS answers every call; UACs offer calls through the system, one per system address
(a multi-worker system gets its rate spread evenly over its workers' ports), each in its own
directory so their statistics files do not mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.support.ports import free_port

from . import proc, sipp
from .callrate import split_calls
from .systems import System


class Uas:
    """A SIPp UAS (scenarios/uas.xml) on a free port of 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, name: str = "uas",
                 timeout_s: int | None = None) -> None:
        self.port = free_port("udp")
        self.workdir = workdir
        self.name = name
        extra = ["-timeout", f"{timeout_s}s"] if timeout_s else []
        self.proc = sipp.SippProcess(
            name, sipp.uas_command(binary, port=self.port, stat_file=f"{name}_stat.csv",
                                   extra=extra), workdir)
        if not proc.wait_udp_bound(self.port):
            self.proc.stop()
            raise RuntimeError(f"SIPp UAS did not bind {self.port}:\n{self.proc.output_tail()}")

    def stats(self) -> dict[str, str]:
        return sipp.stats_of(self.workdir / f"{self.name}_stat.csv")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stop()


class Uacs:
    """`calls` calls at `rate` calls/s through `system`, one SIPp UAC per system address."""

    def __init__(self, binary: str, system: System, workdir: Path, *, name: str, uas: Uas,
                 rate: float, calls: int, scenario: Path = sipp.UAC_SCENARIO,
                 extra: Sequence[str] = (), limit: int | None = None,
                 recv_timeout_ms: int = 5000, timeout_s: int | None = None) -> None:
        self.workdir = workdir
        self.procs: list[sipp.SippProcess] = []
        self.ports: list[int] = []
        targets = system.addresses
        shares = split_calls(calls, len(targets))
        for i, (target, share) in enumerate(zip(targets, shares, strict=True)):
            if share <= 0:
                continue
            pname = name if len(targets) == 1 else f"{name}{i}"
            port = free_port("udp")
            self.ports.append(port)
            self.procs.append(sipp.SippProcess(
                pname,
                sipp.uac_command(
                    binary, uas=("127.0.0.1", uas.port), proxy=target, local_port=port,
                    rate=rate * share / calls, calls=share, stat_file=f"{pname}_stat.csv",
                    scenario=scenario,
                    limit=(limit * share // calls + 1) if limit is not None else None,
                    recv_timeout_ms=recv_timeout_ms, timeout_s=timeout_s, extra=extra,
                ),
                workdir,
            ))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stats(self) -> dict[str, str]:
        """The UACs' latest statistics rows, added up."""
        return sipp.sum_stats(sipp.stats_of(self.workdir / f"{p.name}_stat.csv")
                              for p in self.procs)

    def logs(self) -> list[str]:
        """Lines of the scenarios' `<log>` actions (-trace_logs), every UAC's."""
        lines: list[str] = []
        for path in sorted(self.workdir.glob("*_logs.log")):
            lines.extend(path.read_text(errors="replace").splitlines())
        return lines

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stop()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every UAC to end by itself; False if one did not."""
        import time

        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        done = not self.running()
        for p in self.procs:
            if p.poll() is not None:
                p.wait()
        return done


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_all(system: System, *load: _Stoppable | None) -> None:
    """A part's end, whatever happened: the system first, then its load (None: never
    started)."""
    system.stop()
    for running in load:
        if running is not None:
            running.stop()


def failure(exc: BaseException) -> str:
    """How a part records the error that ended it early (its other results are kept)."""
    return f"{type(exc).__name__}: {exc}"
