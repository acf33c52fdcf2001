"""Test harness shared by the integration, interop and cluster suites.

Owns: picking free loopback ports, running `python -m switchboard serve` as a subprocess and
talking to its management interface (JSON-RPC 2.0 over HTTP), and running SIPp scenarios and
reading their statistics. Knows nothing about switchboard's internals: everything goes through
the command line, sockets and the MI, exactly as a user would drive it.

All traffic stays on 127.0.0.1; ports are chosen at run time.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = REPO_ROOT / "tests" / "interop" / "scenarios"
HOST = "127.0.0.1"

PortKind = Literal["udp", "tcp", "both"]

# ----------------------------------------------------------------------------- ports

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


def _tail(text: str, lines: int = 60, chars: int = 6000) -> str:
    """The end of `text`: at most `lines` lines and `chars` characters (SIPp's error log
    runs its entries together on one line)."""
    parts = text.splitlines()
    cut = len(parts) - lines
    if cut > 0:
        text = "\n".join(parts[-lines:])
    if len(text) > chars:
        text = text[-chars:]
        cut = max(cut, 1)
    return f"[... earlier output cut ...]\n{text}" if cut > 0 else text


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- switchboard


class ServerStartError(RuntimeError):
    """`switchboard serve` exited or stayed silent instead of saying it is ready."""


class MIError(Exception):
    """A JSON-RPC error answer from the management interface."""

    def __init__(self, method: str, code: int | None, message: str, reply: Any) -> None:
        super().__init__(f"MI {method}: error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message
        self.reply = reply


_READY = re.compile(r"\bready\b", re.IGNORECASE)
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98", re.IGNORECASE)


@dataclass
class SwitchboardServer:
    """A running `python -m switchboard serve` subprocess.

    Listens on udp:127.0.0.1:`udp_port` and tcp:127.0.0.1:`tcp_port` (the same number) and
    serves the MI at `mi_url`. Everything it prints (stdout and stderr, in arrival order) is
    kept in `output` and written to `log_path`.
    """

    proc: subprocess.Popen[bytes]
    args: list[str]
    udp_port: int
    tcp_port: int
    mi_port: int
    log_path: Path
    name: str = "switchboard"
    host: str = HOST
    _lines: list[str] = field(default_factory=list, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _readers: list[threading.Thread] = field(default_factory=list, repr=False)
    _rpc_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    killed: bool = False
    _log: Any = field(default=None, repr=False)

    # -- addresses

    @property
    def mi_url(self) -> str:
        return f"http://{self.host}:{self.mi_port}/mi"

    @property
    def udp_address(self) -> tuple[str, int]:
        return (self.host, self.udp_port)

    @property
    def tcp_address(self) -> tuple[str, int]:
        return (self.host, self.tcp_port)

    # -- output

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def _pump(self, stream: Any, label: str, log: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            with self._cond:
                self._lines.append(line if label == "stderr" else f"[stdout] {line}")
                log.write(line)
                log.flush()
                self._cond.notify_all()
        stream.close()

    def _start_readers(self) -> None:
        log = self._log = self.log_path.open("a", encoding="utf-8")
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, label in ((self.proc.stderr, "stderr"), (self.proc.stdout, "stdout")):
            t = threading.Thread(
                target=self._pump,
                args=(stream, label, log),
                daemon=True,
                name=f"{self.name}-{label}",
            )
            t.start()
            self._readers.append(t)

    def wait_for_output(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, *, stderr_only: bool = False
    ) -> str:
        """Wait until a line matching `pattern` (regex) appears; return that line.

        Raises TimeoutError with the output so far, or ServerStartError if the process exits.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if stderr_only and line.startswith("[stdout] "):
                        continue
                    if rx.search(line):
                        return line
                seen = len(self._lines)
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise ServerStartError(
                        f"{self.name} exited with code {self.proc.returncode} before printing "
                        f"{rx.pattern!r}; command: {' '.join(self.args)}\n"
                        f"--- output ---\n{''.join(self._lines)}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name} did not print {rx.pattern!r} within {timeout} s; "
                        f"command: {' '.join(self.args)}\n--- output ---\n{''.join(self._lines)}"
                    )
                self._cond.wait(min(left, 0.1))

    # -- management interface

    def mi(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None, /, **named: Any
    ) -> dict[str, Any]:
        """Call an MI command (JSON-RPC 2.0 POST to /mi) and return the decoded reply object.

        Named parameters as keywords (`srv.mi("dialog:end_dlg", dialog_id=cid)`), or a dict or
        list as the second positional argument (for names that are not Python identifiers and
        for positional params). The reply is returned as is, `result` or `error` included.
        """
        if params is not None and named:
            raise TypeError("give MI params either positionally or as keywords, not both")
        payload: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._rpc_ids)}
        if params is not None:
            payload["params"] = params if isinstance(params, Mapping) else list(params)
        elif named:
            payload["params"] = named
        request = urllib.request.Request(
            self.mi_url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            # mi_http answers 200 even for JSON-RPC errors; anything else is a server bug,
            # but keep the body so the test can show it.
            body = exc.read()
            try:
                reply = json.loads(body)
            except ValueError:
                raise AssertionError(
                    f"MI {method}: HTTP {exc.code} {exc.reason}: {body[:2000]!r}"
                ) from exc
            if isinstance(reply, dict):
                reply.setdefault("_http_status", exc.code)
                return reply
            raise AssertionError(f"MI {method}: HTTP {exc.code}: {reply!r}") from exc
        reply = json.loads(body)
        if not isinstance(reply, dict):
            raise AssertionError(f"MI {method}: reply is not a JSON object: {reply!r}")
        return reply

    def mi_result(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None, /, **named: Any
    ) -> Any:
        """Like `mi`, but return `result` and raise MIError for an `error` answer."""
        reply = self.mi(method, params, **named)
        if "error" in reply:
            error = reply["error"] or {}
            raise MIError(method, error.get("code"), str(error.get("message")), reply)
        if "result" not in reply:
            raise AssertionError(f"MI {method}: reply has neither result nor error: {reply!r}")
        return reply["result"]

    # -- lifetime

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(5)
        for t in self._readers:
            t.join(2)
        with self._cond:
            if self._log is not None and not any(t.is_alive() for t in self._readers):
                self._log.close()
        return self.proc.returncode

    def describe(self, lines: int = 200) -> str:
        """Command, state and the tail of the output, for failure messages."""
        state = "running" if self.proc.poll() is None else f"exit code {self.proc.returncode}"
        return (
            f"{self.name} ({state}); command: {' '.join(self.args)}\n"
            f"log: {self.log_path}\n--- output ---\n{_tail(self.output, lines)}"
        )


def start_switchboard(
    *extra_args: str,
    log_dir: Path,
    name: str = "switchboard",
    udp: bool = True,
    tcp: bool = True,
    ready_timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> SwitchboardServer:
    """Start `python -m switchboard serve` on fresh ports and wait for its `ready` line.

    Listens on udp:127.0.0.1:P and/or tcp:127.0.0.1:P (one port number for both) with the MI
    on 127.0.0.1:P2; `extra_args` are appended to the command line. Retries with new ports if
    a port was taken in the meantime. `port` fixes P instead (the caller made sure it is free;
    no retry then). Raises ServerStartError (with the output) when the process exits or stays
    silent for `ready_timeout` s.
    """
    if not (udp or tcp):
        raise ValueError("a switchboard needs at least one of udp, tcp")
    log_dir.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    fixed_port = port
    for attempt in range(1 if fixed_port else 3):
        port = fixed_port or free_port("both" if udp and tcp else "udp" if udp else "tcp")
        mi_port = free_port("tcp")
        args = [sys.executable, "-m", "switchboard", "serve"]
        if udp:
            args += ["--listen", f"udp:{HOST}:{port}"]
        if tcp:
            args += ["--listen", f"tcp:{HOST}:{port}"]
        args += ["--mi-http", f"{HOST}:{mi_port}", *extra_args]
        proc_env = dict(os.environ)
        proc_env["PYTHONUNBUFFERED"] = "1"
        proc_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        if env:
            proc_env.update(env)
        log_path = log_dir / (f"{name}.log" if attempt == 0 else f"{name}.{attempt}.log")
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=proc_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        server = SwitchboardServer(
            proc=proc,
            args=args,
            udp_port=port,
            tcp_port=port,
            mi_port=mi_port,
            log_path=log_path,
            name=name,
        )
        server._start_readers()
        try:
            server.wait_for_output(_READY, ready_timeout, stderr_only=True)
        except ServerStartError as exc:
            server.stop()
            last_error = exc
            if _ADDRESS_IN_USE.search(server.output):
                continue
            raise
        except TimeoutError as exc:
            server.stop()
            raise ServerStartError(str(exc)) from None
        return server
    assert last_error is not None
    raise last_error


# ----------------------------------------------------------------------------- SIPp

SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1"}


def sipp_binary() -> str | None:
    """Path of the SIPp binary (Debian package sip-tester), or None."""
    return os.environ.get("SIPP") or shutil.which("sipp")


@dataclass
class SippResult:
    """What one SIPp run left behind: exit code, final statistics and log files."""

    name: str
    args: list[str]
    returncode: int | None
    stats: dict[str, str]
    files: dict[str, Path]

    def count(self, column: str) -> int:
        """A cumulative counter from the statistics CSV, e.g. count("SuccessfulCall")."""
        value = self.stats.get(column if column.endswith(")") else f"{column}(C)", "")
        try:
            return int(value)
        except ValueError:
            return -1

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    @property
    def unexpected(self) -> int:
        return self.count("FailedUnexpectedMessage")

    def problems(self, calls: int) -> list[str]:
        """Why this run is not `calls` clean successful calls (empty when it is)."""
        out = []
        if self.returncode != 0:
            out.append(f"exit code {self.returncode} (0 = all calls successful)")
        if not self.stats:
            out.append("no statistics written")
        else:
            if self.successful != calls:
                out.append(f"SuccessfulCall(C) = {self.successful}, expected {calls}")
            if self.failed != 0:
                out.append(f"FailedCall(C) = {self.failed}")
            if self.unexpected != 0:
                out.append(f"FailedUnexpectedMessage(C) = {self.unexpected}")
        return out

    def describe(self, lines: int = 60) -> str:
        interesting = (
            "SuccessfulCall(C)",
            "FailedCall(C)",
            "FailedUnexpectedMessage(C)",
            "FailedMaxUDPRetrans(C)",
            "FailedTimeoutOnRecv(C)",
            "FailedTcpConnect(C)",
            "FailedTcpClosed(C)",
            "OutOfCallMsgs(C)",
            "DeadCallMsgs(C)",
            "Retransmissions(C)",
        )
        stats = ", ".join(f"{k}={self.stats[k]}" for k in interesting if k in self.stats)
        parts = [
            f"=== sipp {self.name}: exit code {self.returncode}",
            f"command: {' '.join(self.args)}",
            f"stats: {stats or '(none)'}",
        ]
        for label in ("errors", "stderr", "screen", "messages"):
            path = self.files.get(label)
            if path is None:
                continue
            text = _read(path).strip()
            if text:
                parts.append(f"--- {label} ({path}) ---\n{_tail(text, lines)}")
        return "\n".join(parts)


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp `-trace_stat` CSV (`;`-separated) keyed by column name."""
    try:
        with path.open(newline="", errors="replace") as f:
            rows = [row for row in csv.reader(f, delimiter=";") if row]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {k: v for k, v in zip(header, last, strict=False) if k}


class Sipp:
    """One SIPp process running a scenario from tests/interop/scenarios in the foreground.

    `remote` is "host:port" for a UAC (SIPp sends every message there, so it is the proxy);
    a UAS scenario leaves it None. `keys` become `-key NAME VALUE` ([NAME] in the scenario).
    `timeout` (s) bounds the whole run (-timeout, an error when reached); `recv_timeout` (s)
    bounds each wait for an expected message. Logs (errors, statistics CSV, final screen,
    message trace, stdout/stderr) go to `log_dir`.
    """

    def __init__(
        self,
        name: str,
        scenario: str | Path,
        *,
        log_dir: Path,
        local_port: int,
        remote: str | None = None,
        transport: Literal["udp", "tcp"] = "udp",
        calls: int = 1,
        rate: float | None = None,
        keys: Mapping[str, object] | None = None,
        service: str = "uas",
        timeout: float = 60.0,
        recv_timeout: float = 10.0,
        trace_msg: bool = True,
        extra_args: Iterable[str] = (),
    ) -> None:
        binary = sipp_binary()
        if binary is None:
            raise FileNotFoundError(
                "sipp not found: apt-get install sip-tester (scripts/test does)"
            )
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIOS / path
        if not path.exists():
            raise FileNotFoundError(f"no SIPp scenario {path}")
        self.name = name
        self.local_port = local_port
        self.transport = transport
        self.calls = calls
        log_dir.mkdir(parents=True, exist_ok=True)
        self.files = {
            "errors": log_dir / f"sipp-{name}-errors.log",
            "stats": log_dir / f"sipp-{name}-stats.csv",
            "screen": log_dir / f"sipp-{name}-screen.log",
            "stdout": log_dir / f"sipp-{name}-stdout.log",
            "stderr": log_dir / f"sipp-{name}-stderr.log",
        }
        if trace_msg:
            self.files["messages"] = log_dir / f"sipp-{name}-messages.log"
        args = [binary]
        if remote is not None:
            args.append(remote)
        args += [
            "-sf",
            str(path),
            "-i",
            HOST,
            "-p",
            str(local_port),
            "-t",
            SIPP_TRANSPORTS[transport],
            "-s",
            service,
            "-m",
            str(calls),
            "-nostdin",
            # SIPp's remote-control socket (UDP, all interfaces, default 8888) turns any
            # datagram into key presses ("q" quits): keep it on a private port.
            "-cp",
            str(free_port("udp")),
            "-timeout",
            f"{int(timeout)}s",
            "-timeout_error",
            # A call whose next message does not come within this fails (FailedTimeoutOnRecv)
            # instead of holding the run until the global -timeout; recv timeout="..."
            # attributes in a scenario override it.
            "-recv_timeout",
            f"{int(recv_timeout * 1000)}",
            "-trace_err",
            "-error_file",
            str(self.files["errors"]),
            "-trace_stat",
            "-stf",
            str(self.files["stats"]),
            "-fd",
            "1",
            "-trace_screen",
            "-screen_file",
            str(self.files["screen"]),
        ]
        if trace_msg:
            args += ["-trace_msg", "-message_file", str(self.files["messages"])]
        if rate is not None:
            args += ["-r", f"{rate:g}", "-rp", "1000"]
        for key, value in (keys or {}).items():
            args += ["-key", key, str(value)]
        args += list(extra_args)
        self.args = args
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: SippResult | None = None

    def start(self) -> Sipp:
        with self.files["stdout"].open("wb") as out, self.files["stderr"].open("wb") as err:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.files["stats"].parent,
            )
        return self

    def wait_listening(self, timeout: float = 10.0) -> Sipp:
        """For a UAS: wait until SIPp has bound its port (and fail fast if it died)."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"sipp {self.name} exited early\n{self.finish().describe()}")
            try:
                wait_listening(self.local_port, self.transport, timeout=0.2)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"sipp {self.name} does not listen on {self.transport} "
                        f"port {self.local_port} after {timeout} s"
                    ) from None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit (killing it after `timeout`, default its own -timeout + 15 s)."""
        assert self.proc is not None, "start() first"
        try:
            self.proc.wait(self.timeout + 15 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.finish()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def snapshot(self) -> SippResult:
        """The run as it stands now (exit code None while it still runs)."""
        return SippResult(
            name=self.name,
            args=self.args,
            returncode=None if self.proc is None else self.proc.poll(),
            stats=read_sipp_stats(self.files["stats"]),
            files=self.files,
        )

    def finish(self) -> SippResult:
        """Record and return the result of a run that has exited."""
        assert self.proc is not None, "start() first"
        self.result = self.snapshot()
        return self.result


def dialogs(server: SwitchboardServer) -> list[dict[str, Any]]:
    """The server's `dialog:list`."""
    found = server.mi_result("dialog:list")["Dialogs"]
    assert isinstance(found, list)
    return found


def wait_dialogs(
    server: SwitchboardServer,
    ok: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 5.0,
) -> list[dict[str, Any]]:
    """Poll `dialog:list` until `ok(dialogs)`: the UAs' events can run ahead of the proxy
    (a caller's "established" comes before the proxy relays its ACK)."""
    deadline = time.monotonic() + timeout
    while True:
        found = dialogs(server)
        if ok(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"dialog:list: not {what} after {timeout} s: {found!r}")
        time.sleep(0.05)
