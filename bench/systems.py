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
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import free_port, free_port_block

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

    def worker_pids(self) -> list[int] | None:
        """The processes doing the SIP work when the system has others besides (Ray's GCS,
        raylet ...); None when all of `pids()` are."""
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return ("127.0.0.1", self.port)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every SIP address new calls may be sent to (one per worker of a multi-worker
        system; the load is spread evenly over them)."""
        return [self.address]

    def pick_port(self) -> int:
        return free_port("udp")

    start_timeout = 30.0
    warmup_s = 0.5
    """How long to leave a just-started system alone before measuring it."""

    def start(self, workdir: Path, timeout: float | None = None) -> None:
        why = self.available()
        if why is not None:
            raise SystemError_(f"{self.name}: {why}")
        timeout = timeout if timeout is not None else self.start_timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.pick_port()
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
            if all(sip_ping(a, wait=0.2) for a in self.addresses):
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

    def __init__(self, python: str | None = None, profile_to: Path | None = None,
                 extra_args: Sequence[str] = (), gc_watch_to: Path | None = None) -> None:
        super().__init__()
        self.gc_watch_to = gc_watch_to
        """When set, time every garbage collection (bench/_gcwatch.py) and write them there."""
        self.python = python or sys.executable
        self.mi_port: int | None = None
        self.profile_to = profile_to
        """When set, run under cProfile (CPU time) and write its statistics there on exit."""
        self.extra_args = list(extra_args)
        """More `serve` options (`--event-datagram udp:...`)."""
        self._mi: Any = None

    def command(self, port: int) -> list[str]:
        self.mi_port = free_port("tcp")
        if self.profile_to is not None:
            start = ["-m", "bench._profiled", str(self.profile_to), "switchboard"]
        elif self.gc_watch_to is not None:
            start = ["-m", "bench._gcwatch", str(self.gc_watch_to), "switchboard"]
        else:
            start = ["-m", "switchboard"]
        return [self.python, *start, "serve",
                "--listen", f"udp:127.0.0.1:{port}",
                "--mi-http", f"127.0.0.1:{self.mi_port}", *self.extra_args]

    @property
    def mi_url(self) -> str:
        assert self.mi_port is not None
        return f"http://127.0.0.1:{self.mi_port}/mi"

    def mi(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        """Call an MI command over JSON-RPC (one kept-alive HTTP connection)."""
        from tests.support.mi import MiClient

        if self._mi is None or self._mi.url != self.mi_url:
            self._mi = MiClient(self.mi_url)
        return self._mi.call(method, params, timeout=timeout)

    def statistics(self, *names: str) -> dict[str, int]:
        return dict(self.mi("statistics:get", [list(names) or ["all"]]))

    def stop(self, timeout: float = 10.0) -> None:
        if self._mi is not None:
            self._mi.close()
            self._mi = None
        super().stop(timeout)

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


class SwitchboardRay(Switchboard):
    """switchboard's Ray runtime with N workers on a private, loopback-only Ray
    (`bench/_ray_serve.py`). Worker i listens on the base port + i; the bench spreads new
    calls evenly over the workers' ports, one SIPp UAC per port. With `shared_port` every
    worker listens on the base port (`[runtime] shared_port`, docs/ray.md) and one SIPp UAC
    sends every call there."""

    start_timeout = 180.0
    warmup_s = 5.0  # Ray is still busy for a few seconds after the workers answer

    def __init__(self, workers: int, python: str | None = None,
                 extra_args: Sequence[str] = (), shared_port: bool = False) -> None:
        super().__init__(python=python, extra_args=extra_args)
        self.workers = workers
        self.shared_port = shared_port
        plural = "s" if workers > 1 else ""
        if shared_port:
            self.name = f"switchboard-ray-{workers}-shared"
            self.label = f"switchboard (Ray runtime, {workers} worker{plural}, one address)"
        else:
            self.name = f"switchboard-ray-{workers}"
            self.label = f"switchboard (Ray runtime, {workers} worker{plural})"
        self._config: Path | None = None

    def pick_port(self) -> int:
        # The workers' SIP ports and the MI's in one block below the ephemeral range: Ray
        # binds many ports of its own while it starts, and one of them could otherwise be a
        # port picked free a moment before.
        base = free_port_block(self.workers + 1)
        self.mi_port = base + self.workers
        return base

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self.port is not None
        if self.shared_port:
            return [("127.0.0.1", self.port)]
        return [("127.0.0.1", self.port + i) for i in range(self.workers)]

    def command(self, port: int) -> list[str]:
        if self.mi_port is None:
            self.mi_port = free_port("tcp")
        if self._config is None:
            handle, name = tempfile.mkstemp(prefix="bench-ray-", suffix=".toml")
            with os.fdopen(handle, "w") as out:
                out.write(f"[runtime]\nshared_port = {'true' if self.shared_port else 'false'}\n")
            self._config = Path(name)
        return [self.python, "-m", "bench._ray_serve", "serve", "--config", str(self._config),
                "--runtime", "ray", "--workers", str(self.workers),
                "--listen", f"udp:127.0.0.1:{port}",
                "--mi-http", f"127.0.0.1:{self.mi_port}", *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def worker_pids(self) -> list[int]:
        """The worker actors' processes (the SIP work), without Ray's own."""
        return [pid for pid in self.pids() if "WorkerActor" in proc.cmdline(pid)]

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        if self._config is not None:
            self._config.unlink(missing_ok=True)
            self._config = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "workers": self.workers, "shared_port": self.shared_port,
                "ports": [p for _, p in self.addresses] if self.port else []}


def decode_answer(body: bytes, method: str = "") -> Any:
    """The result of a JSON-RPC answer's bytes; its error raised."""
    import json

    answer = json.loads(body)
    if "error" in answer:
        raise SystemError_(f"jsonrpc {method}: {answer['error']}")
    return answer.get("result")


class Kamailio(System):
    """Kamailio from Debian's packages with bench/kamailio/kamailio.cfg."""

    name = "kamailio"
    label = "Kamailio (tm + rr + dialog)"

    def __init__(self, children: int | None = None, shm_mb: int = 2048, pkg_mb: int = 64,
                 ctl: bool = False, extra_args: Sequence[str] = ()) -> None:
        super().__init__()
        self.children = children or (os.cpu_count() or 2)
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.ctl = ctl
        """Load ctl + kex (WITH_CTL in kamailio.cfg) so that `rpc()` (kamcmd) works."""
        self.extra_args = list(extra_args)
        """More command-line options (the TLS part's listener and `-A` defines)."""
        self.ctl_socket: Path | None = None

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
        cmd = [binary, "-f", str(KAMAILIO_CFG), "-L", mdir,
               "-l", f"udp:127.0.0.1:{port}", "-n", str(self.children),
               "-m", str(self.shm_mb), "-M", str(self.pkg_mb), "-DD", "-E"]
        if self.ctl:
            self.ctl_socket = Path(tempfile.mkdtemp(prefix="bench-kam-")) / "ctl.sock"
            rpc_dir = self.ctl_socket.parent
            cmd += ["-A", "WITH_CTL", "-A", f'CTL_SOCKET="unix:{self.ctl_socket}"',
                    "-A", f'RPC_FIFO="{rpc_dir / "rpc.fifo"}"',
                    "-A", f'RPC_REPLY_DIR="{rpc_dir}/"']
            # Room in the ctl process's private memory for a dlg.list of 100,000 dialogs
            # (only the pages a process touches count in its RSS/PSS).
            cmd[cmd.index("-M") + 1] = str(max(self.pkg_mb, 1024))
        return cmd + self.extra_args

    def rpc(self, *args: str, timeout: float = 60.0) -> str:
        """`kamcmd` against this Kamailio's ctl socket (needs `ctl=True`); its output."""
        if self.ctl_socket is None:
            raise SystemError_("kamailio was started without its ctl socket")
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        out = subprocess.run([kamcmd, "-s", f"unix:{self.ctl_socket}", *args],
                             capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise SystemError_(f"kamcmd {' '.join(args)}: {out.stderr.strip() or out.stdout}")
        return out.stdout

    def jsonrpc(self, method: str, timeout: float = 300.0,
                decode: bool = True) -> tuple[Any, int, float]:
        """A JSON-RPC command through jsonrpcs' FIFO (needs `ctl=True`), for answers too big
        for kamcmd (`dlg.list`): (result, bytes of the answer, seconds from sending the
        request to the answer's last byte). With `decode=False` the result is the answer's
        bytes, to decode later (`decode_answer`)."""
        import json
        import select

        if self.ctl_socket is None:
            raise SystemError_("kamailio was started without its RPC sockets")
        rpc_dir = self.ctl_socket.parent
        reply_name = f"reply_{uuid.uuid4().hex[:12]}"  # no dots or slashes: jsonrpcs refuses them
        reply_path = rpc_dir / reply_name
        os.mkfifo(reply_path, 0o600)
        try:
            request = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1,
                                  "reply_name": reply_name}).encode() + b"\n"
            # Our end of the reply FIFO is open (non-blocking) before Kamailio opens its end;
            # the answer is over when Kamailio closes it (read gives b"" after some data).
            fd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
            chunks: list[bytes] = []
            try:
                t0 = time.perf_counter()
                with open(rpc_dir / "rpc.fifo", "wb") as fifo:
                    fifo.write(request)
                deadline = time.monotonic() + timeout
                while True:
                    if time.monotonic() >= deadline:
                        raise SystemError_(f"jsonrpc {method}: no whole answer in {timeout:g} s")
                    ready, _, _ = select.select([fd], [], [], 0.5)
                    if not ready:
                        continue
                    data = os.read(fd, 1 << 20)
                    if data:
                        chunks.append(data)
                    elif chunks:
                        break  # Kamailio closed its end: the whole answer is here
                    else:
                        time.sleep(0.002)  # no writer yet
                elapsed = time.perf_counter() - t0
            finally:
                os.close(fd)
            body = b"".join(chunks)
            return (decode_answer(body, method) if decode else body), len(body), elapsed
        finally:
            with contextlib.suppress(OSError):
                reply_path.unlink()

    def statistics(self, *names: str) -> dict[str, int]:
        """Counters by `group:name` (`kamcmd stats.get_statistics`)."""
        return parse_kamcmd_stats(self.rpc("stats.get_statistics", *(names or ("all",))))

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.ctl_socket is not None:
            shutil.rmtree(self.ctl_socket.parent, ignore_errors=True)
            self.ctl_socket = None

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


def parse_kamcmd_stats(text: str) -> dict[str, int]:
    """`group:name = value` lines of `kamcmd stats.get_statistics` → {name: value}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq and value.strip().lstrip("-").isdigit():
            out[name.strip()] = int(value.strip())
    return out


def parse_kamcmd_struct(text: str) -> dict[str, str]:
    """The `name: value` members of a flat `{ ... }` kamcmd answer (`core.shmmem`, `tm.stats`)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.strip().partition(":")
        if colon and name and not name.startswith("{"):
            out[name.strip()] = value.strip()
    return out


def module_dir() -> str | None:
    for pattern in ("/usr/lib/*/kamailio/modules", "/usr/lib/kamailio/modules",
                    "/usr/local/lib*/kamailio/modules", "/usr/local/lib/*/kamailio/modules"):
        for path in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(path, "tm.so")):
                return path
    return None


def ensure_kamailio(log: Any = print, modules: Sequence[str] = ()) -> bool:
    """Install Debian's kamailio package when it is missing (root or passwordless sudo),
    and the packages of `modules` (`{"tls.so": "kamailio-tls-modules"}`-style names: see
    `MODULE_PACKAGES`)."""
    missing = [MODULE_PACKAGES[m] for m in modules if not _has_module(m)]
    if Kamailio().available() is None and not missing:
        return True
    if shutil.which("apt-get") is None:
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = ["kamailio", *missing]
    log(f"installing Debian's {', '.join(packages)}")
    install = ["apt-get", "install", "-y", "-qq", *packages]
    for args in (install, ["apt-get", "update", "-qq"], install):
        subprocess.run(prefix + args, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if Kamailio().available() is None and all(_has_module(m) for m in modules):
            return True
    return False


MODULE_PACKAGES = {"tls.so": "kamailio-tls-modules",
                   "websocket.so": "kamailio-websocket-modules"}
"""Kamailio modules outside Debian's kamailio package → the package that has them."""


def _has_module(name: str) -> bool:
    mdir = module_dir()
    return mdir is not None and os.path.exists(os.path.join(mdir, name))


SYSTEMS: dict[str, type[System]] = {
    "switchboard": Switchboard,
    "switchboard-ray-1": SwitchboardRay,
    "switchboard-ray-2": SwitchboardRay,
    "kamailio": Kamailio,
}


def make_system(name: str, **options: Any) -> System:
    if name == "kamailio":
        return Kamailio(children=options.get("kamailio_children"),
                        ctl=bool(options.get("ctl", False)),
                        extra_args=options.get("extra_args", ()))
    if name == "switchboard":
        return Switchboard(extra_args=options.get("extra_args", ()))
    m = re.fullmatch(r"switchboard-ray-(\d+)(-shared)?", name)
    if m and int(m.group(1)) >= 1:
        return SwitchboardRay(int(m.group(1)), extra_args=options.get("extra_args", ()),
                              shared_port=m.group(2) is not None)
    raise SystemError_(f"unknown system {name!r} (known: {', '.join(SYSTEMS)})")


def known_system(name: str) -> bool:
    return name in SYSTEMS or re.fullmatch(r"switchboard-ray-[1-9]\d*(-shared)?",
                                            name) is not None


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
