"""The systems under test: how to start each one, find all its processes and stop it.

Every system listens on one UDP socket on 127.0.0.1 at a port chosen at run time, relays by
Request-URI, record-routes and tracks dialogs. A system is ready when it answers a SIP OPTIONS
with `Max-Forwards: 0` (any response will do: 200 from switchboard, 483 from Kamailio).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from . import proc

REPO = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "kamailio.cfg"


class SystemError_(RuntimeError):
    """A system could not be started or is not available."""


class System(ABC):
    """A proxy under test, started as a child process of the bench."""

    name: str
    label: str

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.cmd: list[str] = []
        self.log_path: Path | None = None
        self._log: Any = None

    # -- what each system says ---------------------------------------------------------------

    @abstractmethod
    def command(self, port: int) -> list[str]: ...

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return REPO

    @abstractmethod
    def version(self) -> str: ...

    def available(self) -> str | None:
        """None when the system can run here, else why not."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "version": self.version(),
                "command": self.cmd}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return ("127.0.0.1", self.port)

    def start(self, workdir: Path, timeout: float = 30.0) -> None:
        why = self.available()
        if why is not None:
            raise SystemError_(f"{self.name}: {why}")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = proc.free_port("udp")
        self.cmd = self.command(self.port)
        self.log_path = workdir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd(), env=self.environment(), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemError_(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if sip_ping(self.address, wait=0.2):
                return
        self.stop()
        raise SystemError_(f"{self.name} did not answer OPTIONS in {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def pids(self) -> list[int]:
        """The root process and all its descendants, right now."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return proc.tree_pids(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pids = self.pids()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            # Whatever of its tree is still there (only the processes it started).
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Switchboard(System):
    """switchboard's local runtime: one process, one worker, under uvloop."""

    name = "switchboard"
    label = "switchboard (local runtime)"

    def __init__(self, python: str | None = None, profile_to: Path | None = None) -> None:
        super().__init__()
        self.python = python or sys.executable
        self.mi_port: int | None = None
        self.profile_to = profile_to
        """When set, run under cProfile (CPU time) and write its statistics there on exit."""

    def command(self, port: int) -> list[str]:
        self.mi_port = proc.free_port("tcp")
        if self.profile_to is not None:
            start = ["-m", "bench._profiled", str(self.profile_to), "switchboard"]
        else:
            start = ["-m", "switchboard"]
        return [self.python, *start, "serve",
                "--listen", f"udp:127.0.0.1:{port}",
                "--mi-http", f"127.0.0.1:{self.mi_port}"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("SWITCHBOARD_LOG_LEVEL", "WARNING")
        return env

    def version(self) -> str:
        try:
            from switchboard import __version__
        except ImportError:
            return "unknown"
        commit = _git_commit()
        return f"{__version__} ({commit})" if commit else __version__


class Kamailio(System):
    """Kamailio from Debian's packages with bench/kamailio/kamailio.cfg."""

    name = "kamailio"
    label = "Kamailio (tm + rr + dialog)"

    def __init__(self, children: int | None = None, shm_mb: int = 2048, pkg_mb: int = 64) -> None:
        super().__init__()
        self.children = children or (os.cpu_count() or 2)
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb

    def binary(self) -> str | None:
        candidates = ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")
        return shutil.which("kamailio") or next(
            (p for p in candidates if os.access(p, os.X_OK)), None
        )

    def available(self) -> str | None:
        if self.binary() is None:
            return "kamailio is not installed (apt-get install -y kamailio)"
        if module_dir() is None:
            return "kamailio's module directory (tm.so) was not found"
        return None

    def command(self, port: int) -> list[str]:
        binary = self.binary()
        mdir = module_dir()
        assert binary is not None and mdir is not None
        return [binary, "-f", str(KAMAILIO_CFG), "-L", mdir,
                "-l", f"udp:127.0.0.1:{port}", "-n", str(self.children),
                "-m", str(self.shm_mb), "-M", str(self.pkg_mb), "-DD", "-E"]

    def cwd(self) -> Path:
        return Path("/tmp")

    def version(self) -> str:
        binary = self.binary()
        if binary is None:
            return "not installed"
        try:
            out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        m = re.search(r"kamailio (\S+)", out.stdout)
        return m.group(1) if m else "unknown"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "children": self.children, "shm_mb": self.shm_mb,
                "pkg_mb": self.pkg_mb, "config": str(KAMAILIO_CFG.relative_to(REPO))}


def module_dir() -> str | None:
    for pattern in ("/usr/lib/*/kamailio/modules", "/usr/lib/kamailio/modules",
                    "/usr/local/lib*/kamailio/modules", "/usr/local/lib/*/kamailio/modules"):
        for path in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(path, "tm.so")):
                return path
    return None


def ensure_kamailio(log: Any = print) -> bool:
    """Install Debian's kamailio package when it is missing (root or passwordless sudo)."""
    if Kamailio().available() is None:
        return True
    if shutil.which("apt-get") is None:
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("kamailio is missing: installing Debian's kamailio package")
    for args in (["apt-get", "install", "-y", "-qq", "kamailio"],
                 ["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "kamailio"]):
        subprocess.run(prefix + args, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if Kamailio().available() is None:
            return True
    return False


SYSTEMS: dict[str, type[System]] = {"switchboard": Switchboard, "kamailio": Kamailio}


def make_system(name: str, **options: Any) -> System:
    if name == "kamailio":
        return Kamailio(children=options.get("kamailio_children"))
    if name == "switchboard":
        return Switchboard()
    raise SystemError_(f"unknown system {name!r} (known: {', '.join(SYSTEMS)})")


# --- readiness probe --------------------------------------------------------------------------


def options_probe(target: tuple[str, int], local_port: int) -> bytes:
    branch = "z9hG4bK-bench-" + uuid.uuid4().hex[:12]
    host, port = target
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch};rport\r\n"
        "Max-Forwards: 0\r\n"
        f"From: <sip:bench@127.0.0.1:{local_port}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@bench\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def sip_ping(target: tuple[str, int], wait: float = 0.5) -> bool:
    """True when `target` answers an OPTIONS with any SIP response within `wait` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        try:
            s.sendto(options_probe(target, s.getsockname()[1]), target)
            data = s.recv(65535)
        except OSError:  # timeout, or ICMP port unreachable before the server binds
            time.sleep(wait / 2)
            return False
        return data.startswith(b"SIP/2.0 ")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    status = ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")
