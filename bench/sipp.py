"""SIPp as the load generator: command lines, its statistics CSV and its response-time trace.

Everything here but `SippProcess` is pure, so the unit tests exercise it on recorded text.

- The statistics file (`-trace_stat -stf FILE -fd 1`) is `;`-separated: one header line, then
  one row per dump; SIPp writes a final row when it ends (the UAC when its `-m` calls are
  done, the UAS on SIGUSR1). The cumulative columns end in `(C)`.
- The response-time trace (`-trace_rtt`) is `<scenario>_<pid>_rtt.csv` in SIPp's working
  directory, `Date_ms;response_time_ms;rtd_no` then one row per measured call. SIPp writes it
  only every `-rtt_freq` calls (not at exit), so `rtt_freq_for(calls)` picks a divisor of the
  call count. SIPp's clock ticks in milliseconds: the values are whole milliseconds.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.support.sipp import parse_stat_csv

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAC_SCENARIO = SCENARIOS / "uac.xml"
UAS_SCENARIO = SCENARIOS / "uas.xml"
UAC_LONG_SCENARIO = SCENARIOS / "uac_long.xml"  # uac.xml with a <pause/> (-d) before the BYE
UAC_OVERLOAD_SCENARIO = SCENARIOS / "uac_overload.xml"  # uac.xml that takes a 503 as an outcome
RTD_NAME = "invite"  # the response-time timer in uac.xml: INVITE sent -> 200 OK received

# Socket buffers for SIPp (the kernel caps them at net.core.{r,w}mem_max).
BUFF_SIZE = 4 * 1024 * 1024


def sipp_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"SIPp v?(\S+)", out.stdout + out.stderr)
    return m.group(1).rstrip(".") if m else "unknown"


# --- command lines ----------------------------------------------------------------------------


def rtt_freq_for(calls: int, most: int = 200) -> int:
    """The largest divisor of `calls` not above `most`, so the last rtt dump holds the last
    call (SIPp does not flush the rtt trace at exit)."""
    if calls <= 0:
        return 1
    return max(d for d in range(1, min(calls, most) + 1) if calls % d == 0)


def uac_command(
    binary: str,
    *,
    uas: tuple[str, int],
    proxy: tuple[str, int],
    local_port: int,
    rate: float,
    calls: int,
    stat_file: str,
    scenario: Path = UAC_SCENARIO,
    limit: int | None = None,
    recv_timeout_ms: int = 5000,
    timeout_s: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """SIPp UAC: `calls` calls at `rate` calls/s, every message sent to `proxy` (-rsa), the
    Request-URI naming `uas`, so the proxy relays by Request-URI. `extra`: more options
    (`-d` for the pause of long calls, `-trace_logs`)."""
    cmd = [
        binary, f"{uas[0]}:{uas[1]}",
        "-rsa", f"{proxy[0]}:{proxy[1]}",
        "-sf", str(scenario),
        "-i", "127.0.0.1", "-p", str(local_port),
        "-nostdin",
        "-r", _rate_text(rate), "-rp", "1000",
        "-m", str(calls),
        "-l", str(limit if limit is not None else max(1000, int(rate * 10))),
        "-recv_timeout", str(recv_timeout_ms),
        "-buff_size", str(BUFF_SIZE),
        "-trace_stat", "-stf", stat_file, "-fd", "1",
        "-trace_rtt", "-rtt_freq", str(rtt_freq_for(calls)),
        "-trace_err",
    ]
    if timeout_s is not None:
        cmd += ["-timeout", f"{timeout_s}s"]
    return cmd + list(extra)


def uas_command(
    binary: str, *, port: int, stat_file: str, scenario: Path = UAS_SCENARIO,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        binary,
        "-sf", str(scenario),
        "-i", "127.0.0.1", "-p", str(port),
        "-nostdin",
        "-buff_size", str(BUFF_SIZE),
        "-trace_stat", "-stf", stat_file, "-fd", "1",
        "-trace_err",
        *extra,
    ]


def _rate_text(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else f"{rate:g}"


# --- parsing ----------------------------------------------------------------------------------


def stat_int(stats: dict[str, str], column: str) -> int:
    """An integer column; 0 when missing or empty."""
    value = stats.get(column, "").strip()
    try:
        return int(value)
    except ValueError:
        return 0


def parse_duration_ms(text: str) -> float | None:
    """SIPp's `HH:MM:SS:uuuuuu` (or `HH:MM:SS`) as milliseconds."""
    parts = text.strip().split(":")
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts[:3])
    us = int(parts[3]) if len(parts) == 4 else 0
    return (h * 3600 + m * 60 + s) * 1000.0 + us / 1000.0


def parse_rtt_csv(text: str, rtd: str = RTD_NAME) -> list[float]:
    """Response times (ms) of timer `rtd` from a `-trace_rtt` file."""
    out: list[float] = []
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) < 3 or parts[2] != rtd:
            continue
        try:
            out.append(float(parts[1]))
        except ValueError:
            continue  # the header line
    return out


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least `pct`% at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def sends_per_call(scenario_xml: str) -> int:
    """How many messages one call of a scenario sends (its `<send>` elements)."""
    return len(re.findall(r"<send[\s>]", scenario_xml))


def read_rtts(directory: Path, rtd: str = RTD_NAME) -> list[float]:
    values: list[float] = []
    for path in sorted(directory.glob("*_rtt.csv")):
        values.extend(parse_rtt_csv(path.read_text(errors="replace"), rtd))
    return values


# --- running ----------------------------------------------------------------------------------


class SippProcess:
    """One SIPp run in its own directory; its screen output goes to `<name>.out`."""

    def __init__(self, name: str, cmd: list[str], workdir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._out = open(workdir / f"{name}.out", "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._out.close()

    def stop(self) -> None:
        """Ask SIPp to end (SIGUSR1 writes its final statistics), then insist."""
        for sig, grace in ((signal.SIGUSR1, 1.0), (signal.SIGINT, 2.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self._out.close()

    def output_tail(self, lines: int = 30) -> str:
        path = self.workdir / f"{self.name}.out"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stats_of(path: Path) -> dict[str, str]:
    try:
        return parse_stat_csv(path.read_text(errors="replace"))
    except OSError:
        return {}


def sum_stats(rows: Iterable[dict[str, str]]) -> dict[str, str]:
    """Several SIPp instances' final rows as one: the integer columns added up (the others
    from the first row). One row comes back as it is."""
    rows = [r for r in rows if r]
    if len(rows) <= 1:
        return dict(rows[0]) if rows else {}
    out = dict(rows[0])
    for column in out:
        values = [r.get(column, "").strip() for r in rows]
        if all(v.lstrip("-").isdigit() for v in values):
            out[column] = str(sum(int(v) for v in values))
    return out


def total(stats: Iterable[dict[str, str]], column: str) -> int:
    return sum(stat_int(s, column) for s in stats)
