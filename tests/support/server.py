"""`python -m switchboard serve` as a subprocess, driven as a user would drive it.

Owns: starting `serve` on fresh loopback ports and waiting for its `ready` line, keeping its
output, talking to its management interface (JSON-RPC 2.0 over HTTP) and stopping it; and
polling `dialog:list` (`wait_dialogs`, `wait_confirmed`). Knows nothing about switchboard's
internals: everything goes through the command line, sockets and the MI.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.mi import MiClient, MiError
from tests.support.output import tail
from tests.support.ports import HOST, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIRMED = 4  # the dialog state `dialog:list` shows once the ACK came (OpenSIPS's number)


class ServerStartError(RuntimeError):
    """`switchboard serve` exited or stayed silent instead of saying it is ready."""


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
    _mi: MiClient = field(init=False, repr=False)
    killed: bool = False
    _log: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # One connection a call, as `switchboard mi` makes them.
        self._mi = MiClient(self.mi_url, keep_alive=False)

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
        if params is None and named:
            params = named
        elif params is not None and not isinstance(params, Mapping):
            params = list(params)
        return self._mi.reply(method, params)

    def mi_result(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None, /, **named: Any
    ) -> Any:
        """Like `mi`, but return `result` and raise MiError for an `error` answer."""
        reply = self.mi(method, params, **named)
        if "error" in reply:
            error = reply["error"] or {}
            raise MiError(error.get("code", -32603), str(error.get("message")), error.get("data"),
                          method=method)
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
            f"log: {self.log_path}\n--- output ---\n{tail(self.output, lines)}"
        )


StartServer = Callable[..., SwitchboardServer]
"""The `switchboard_server` fixture: `switchboard_server(*serve arguments, **options)` -> a
running server."""


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


def wait_confirmed(server: SwitchboardServer, callid: str, timeout: float = 10.0
                   ) -> dict[str, Any]:
    """The `dialog:list` entry of the call once it is confirmed (state 4, after the ACK)."""
    found = wait_dialogs(
        server,
        lambda ds: any(d.get("callid") == callid and d.get("state") == CONFIRMED for d in ds),
        f"{callid!r} confirmed",
        timeout,
    )
    return next(dict(d) for d in found if d.get("callid") == callid and d.get("state") == CONFIRMED)
