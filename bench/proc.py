"""What a process tree costs, read from /proc: CPU ticks, RSS and PSS, and free ports.

CPU is `utime + stime` (fields 14 and 15 of /proc/<pid>/stat, every thread of the process
included) summed over a root process and all its descendants. Memory is summed over the same
tree twice: RSS (shared pages counted once per process that maps them, so Kamailio's shared
memory is counted once per child) and PSS (shared pages split between the processes that map
them: the honest sum for a multi-process server).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def parse_stat(text: str) -> tuple[int, int, int]:
    """`(ppid, utime, stime)` from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself,
    so fields are counted from the last `)`.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]), int(rest[12])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant of it (found through the ppid of every process)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if text is None:
            continue
        children.setdefault(parse_stat(text)[0], []).append(int(entry.name))
    if not (PROC / str(root)).exists():
        return []
    out = [root]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by `pids`, in seconds."""
    ticks = 0
    for pid in pids:
        text = _read(PROC / str(pid) / "stat")
        if text is not None:
            _, utime, stime = parse_stat(text)
            ticks += utime + stime
    return ticks / CLOCK_TICKS


def parse_kb_field(text: str, name: str) -> int:
    """The value in kB of `Name:   123 kB` in /proc status-like text; 0 when absent."""
    prefix = name + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix) :].split()[0])
    return 0


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kb: int
    pss_kb: int
    processes: int


def memory(pids: list[int]) -> Memory:
    """RSS and PSS summed over `pids` (kB)."""
    rss = pss = n = 0
    for pid in pids:
        text = _read(PROC / str(pid) / "smaps_rollup")
        if text is None:
            status = _read(PROC / str(pid) / "status")
            if status is None:
                continue
            value = parse_kb_field(status, "VmRSS")
            rss += value
            pss += value
        else:
            rss += parse_kb_field(text, "Rss")
            pss += parse_kb_field(text, "Pss")
        n += 1
    return Memory(rss, pss, n)


def host_cpu_times() -> tuple[float, float]:
    """`(busy, total)` jiffies of the whole machine from the `cpu` line of /proc/stat."""
    with open(PROC / "stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return float(total - idle), float(total)


def busy_pct_of_one_core(busy: float, total: float, cpus: int | None = None) -> float:
    """Machine-wide busy jiffies over an interval as a percentage of one core (like `top`:
    200 % when both cores of a 2-core machine were busy the whole time)."""
    if total <= 0:
        return 0.0
    return 100.0 * busy / total * (cpus or os.cpu_count() or 1)


def sample_host_busy(seconds: float = 1.0) -> float:
    """How busy the machine is right now (% of one core), measured over `seconds`."""
    b0, t0 = host_cpu_times()
    time.sleep(seconds)
    b1, t1 = host_cpu_times()
    return busy_pct_of_one_core(b1 - b0, t1 - t0)


def cmdline(pid: int) -> str:
    """The command line of a process, arguments joined by spaces ('' when it is gone)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def udp_ports_bound() -> set[int]:
    """Local ports of every IPv4 UDP socket (from /proc/net/udp)."""
    ports: set[int] = set()
    text = _read(PROC / "net" / "udp") or ""
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 1:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def parse_udp_drops(text: str, ports: set[int]) -> int:
    """Datagrams the kernel dropped (receive buffer full) on the IPv4 UDP sockets bound to
    `ports`, from the text of /proc/net/udp (its last column)."""
    total = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 13:
            continue
        if int(parts[1].rsplit(":", 1)[1], 16) in ports:
            total += int(parts[12])
    return total


def udp_drops(ports: set[int]) -> int:
    return parse_udp_drops(_read(PROC / "net" / "udp") or "", ports)


def wait_udp_bound(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in udp_ports_bound():
            return True
        time.sleep(0.02)
    return False
