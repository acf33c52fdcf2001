"""Drive real baresip user agents, each in its own process, from synchronous test code.

``BaresipPeer`` starts ``baresip_peer.py`` (beside this file) with ``sys.executable``,
writes JSON commands to its stdin and reads JSON events and replies from its stdout on
a background thread. Tests wait for events by name with a timeout. Nothing here knows
about switchboard: the proxy under test is just a ``sip:`` URI passed as registrar or
outbound proxy.

Example::

    with BaresipPeer("bob", auto_answer=True) as bob, BaresipPeer("alice") as alice:
        alice.dial(bob.contact_uri)
        alice.wait_event("established")
        alice.hangup()
        bob.wait_event("closed")
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

PEER_SCRIPT = Path(__file__).with_name("baresip_peer.py")

#: Generous defaults: CI machines are slow and SIP timers are in seconds.
DEFAULT_TIMEOUT = 15.0

Message = dict[str, Any]


class PeerError(AssertionError):
    """A peer did not do what the test expected (timeout, failed command, crash).

    Subclasses AssertionError so pytest reports it as a test failure with the
    peer's recent traffic and stderr in the message.
    """


class BaresipPeer:
    """One baresip user agent in a subprocess.

    Parameters:
        user: SIP user part (``alice``).
        sip_port: Port to listen on, 127.0.0.1 UDP+TCP; chosen free when None.
        registrar: ``sip:127.0.0.1:PORT`` of a registrar; REGISTERs at start when set.
        outbound_proxy: URI every request is routed through (defaults to the registrar).
        domain: AOR domain; defaults to the registrar's host, else ``127.0.0.1``.
        transfer_policy: What a received REFER does: "manual", "auto" or "reject".
        auto_answer: Answer every incoming call at once (callee-role tests).
        transport: "udp", "tcp" or "tls" toward the registrar / outbound proxy (give its
            URI a matching ``;transport=`` parameter).
        ca_file: CAs that sign the TLS servers the peer connects to (baresip's
            ``sip_cafile``); with ``transport="tls"`` the server's certificate is verified
            against them (``sip_verify_server``) unless ``verify_server`` is False.
        sip_trace: Log every SIP message the peer sends and receives to its stderr.
        extra_args: More command-line arguments for ``baresip_peer.py``.
    """

    def __init__(
        self,
        user: str,
        *,
        sip_port: int | None = None,
        registrar: str | None = None,
        outbound_proxy: str | None = None,
        domain: str | None = None,
        transfer_policy: str = "manual",
        auto_answer: bool = False,
        transport: str = "udp",
        ca_file: str | os.PathLike[str] | None = None,
        verify_server: bool = True,
        sip_trace: bool = False,
        extra_args: tuple[str, ...] = (),
    ):
        self.user = user
        self._auto_port = sip_port is None
        self.sip_port = sip_port if sip_port is not None else free_port("both")
        self.registrar = registrar
        self.outbound_proxy = outbound_proxy
        self.domain = domain
        self.transfer_policy = transfer_policy
        self.auto_answer = auto_answer
        self.transport = transport
        self.ca_file = ca_file
        self.verify_server = verify_server
        self.sip_trace = sip_trace
        self.extra_args = tuple(extra_args)
        self.ready: Message | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._events: list[Message] = []  # every event, in arrival order
        self._claimed: set[int] = set()  # indexes in _events returned by wait_event
        self._replies: dict[Any, Message] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=5000)
        self._stdout_junk: list[str] = []
        self._next_id = 0
        self._threads: list[threading.Thread] = []
        self._exited = False
        self._write_lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, str(PEER_SCRIPT), "--user", self.user]
        argv += ["--sip-port", str(self.sip_port), "--transfer-policy", self.transfer_policy]
        if self.registrar:
            argv += ["--registrar", self.registrar]
        if self.outbound_proxy:
            argv += ["--outbound-proxy", self.outbound_proxy]
        if self.domain:
            argv += ["--domain", self.domain]
        if self.auto_answer:
            argv.append("--auto-answer")
        if self.transport != "udp":
            argv += ["--transport", self.transport]
        if self.ca_file is not None:
            argv += ["--ca-file", os.fspath(self.ca_file)]
        if not self.verify_server:
            argv.append("--no-verify-server")
        if self.sip_trace:
            argv.append("--sip-trace")
        argv += list(self.extra_args)
        return argv

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> BaresipPeer:
        """Start the process and wait for its ``ready`` event.

        A port chosen here (``sip_port=None``) can be taken by someone else before
        baresip binds it; that case is retried on a fresh port.
        """
        if self.proc is not None:
            raise RuntimeError("peer already started")
        for attempt in range(3):
            self._launch()
            try:
                first = self.wait_event(("ready", "start_failed"), timeout=timeout)
            except PeerError:
                self.stop()
                raise
            if first["event"] == "ready":
                self.ready = first
                return self
            error = str(first.get("error"))
            self.stop()
            if not (self._auto_port and "Address already in use" in error and attempt < 2):
                raise PeerError(f"peer failed to start: {error}\n{self.describe()}")
            self._reset()
            self.sip_port = free_port("both")
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        for target, name in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            t = threading.Thread(target=target, name=f"peer-{self.user}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _reset(self) -> None:
        with self._cond:
            self.proc = None
            self._events.clear()
            self._claimed.clear()
            self._replies.clear()
            self._threads.clear()
            self._exited = False

    def __enter__(self) -> BaresipPeer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the peer to quit (hangs up, unregisters), kill it if it lingers.

        Returns the exit code. Safe to call more than once.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self._write({"cmd": "quit"})
                assert proc.stdin is not None
                proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._stderr.append("[harness] peer did not quit in time; killing it")
                proc.kill()
                proc.wait(5)
        for t in self._threads:
            t.join(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    # -- addresses -----------------------------------------------------------

    @property
    def contact_uri(self) -> str:
        """Where this peer listens: ``sip:user@127.0.0.1:PORT`` (for direct dialing)."""
        return f"sip:{self.user}@127.0.0.1:{self.sip_port}"

    @property
    def aor(self) -> str:
        """The address of record it registers (``sip:user@domain``)."""
        if self.ready is not None:
            return str(self.ready["aor"])
        return f"sip:{self.user}@{self.domain or '127.0.0.1'}"

    # -- I/O threads ---------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            with self._cond:
                if isinstance(msg, dict) and "event" in msg:
                    self._events.append(msg)
                elif isinstance(msg, dict) and "reply" in msg:
                    self._replies[msg.get("id")] = msg
                else:
                    self._stdout_junk.append(line)
                self._cond.notify_all()
        with self._cond:
            self._exited = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _write(self, obj: Message) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = (json.dumps(obj) + "\n").encode()
        with self._write_lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    # -- diagnostics ---------------------------------------------------------

    @property
    def stderr(self) -> str:
        """Everything the peer wrote to stderr so far (logs, SIP trace, tracebacks)."""
        return "\n".join(self._stderr)

    def describe(self, stderr_lines: int = 60) -> str:
        with self._cond:
            events = list(self._events[-30:])
            junk = list(self._stdout_junk[-10:])
        tail = list(self._stderr)[-stderr_lines:]
        if junk:
            tail = ["[non-JSON stdout]", *junk, "[stderr]", *tail]
        return (
            f"peer {self.user} (port {self.sip_port}, rc={self.returncode})\n"
            f"  last events:\n    "
            + "\n    ".join(json.dumps(e) for e in events)
            + "\n  stderr tail:\n    "
            + "\n    ".join(tail)
        )

    # -- commands ------------------------------------------------------------

    def send(self, cmd: str, **params: Any) -> int:
        """Send a command without waiting; returns its id for :meth:`wait_reply`."""
        if self.proc is None:
            raise RuntimeError("peer not started")
        with self._cond:
            self._next_id += 1
            cid = self._next_id
        try:
            self._write({"cmd": cmd, "id": cid, **params})
        except (OSError, ValueError) as exc:
            raise PeerError(f"cannot send {cmd!r}: {exc}\n{self.describe()}") from exc
        return cid

    def wait_reply(self, cid: int, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._exited:
                    why = "peer exited" if self._exited else f"no reply within {timeout:g} s"
                    raise PeerError(f"command #{cid}: {why}\n{self.describe()}")
                self._cond.wait(remaining)
            reply = self._replies.pop(cid)
        if check and not reply.get("ok"):
            raise PeerError(f"{reply.get('reply')} failed: {reply.get('error')}\n{self.describe()}")
        return reply

    def command(
        self, cmd: str, *, timeout: float = DEFAULT_TIMEOUT, check: bool = True, **params: Any
    ) -> Message:
        """Send a command and wait for its reply; raise PeerError if it failed and ``check``."""
        return self.wait_reply(self.send(cmd, **params), timeout=timeout, check=check)

    def dial(self, uri: str, **params: Any) -> Message:
        return self.command("dial", uri=uri, **params)

    def answer(self, **params: Any) -> Message:
        return self.command("answer", **params)

    def reject(self, **params: Any) -> Message:
        return self.command("reject", **params)

    def hangup(self, **params: Any) -> Message:
        return self.command("hangup", **params)

    def hold(self, **params: Any) -> Message:
        return self.command("hold", **params)

    def resume(self, **params: Any) -> Message:
        return self.command("resume", **params)

    def transfer(self, uri: str, *, timeout: float = 40.0, **params: Any) -> Message:
        """Blind transfer; the reply arrives once the transferee reports the outcome."""
        return self.command("transfer", uri=uri, timeout=timeout, **params)

    def attended_transfer(self, *, timeout: float = 40.0, **params: Any) -> Message:
        return self.command("attended_transfer", timeout=timeout, **params)

    def state(self) -> Message:
        return self.command("state")

    # -- events --------------------------------------------------------------

    def events(self, name: str | None = None) -> list[Message]:
        """Snapshot of every event received so far (optionally only ``name``)."""
        with self._cond:
            return [e for e in self._events if name is None or e["event"] == name]

    def wait_event(
        self,
        name: str | tuple[str, ...],
        timeout: float = DEFAULT_TIMEOUT,
        predicate: Callable[[Message], bool] | None = None,
        consume: bool = True,
        **match: Any,
    ) -> Message:
        """Wait for the first not-yet-consumed event ``name`` whose fields equal ``match``.

        ``name`` may be a tuple of names (any of them). ``predicate`` filters further.

        Events received before the call count, so there is no race between acting
        and waiting. With ``consume`` (default) the returned event is not returned
        again: waiting twice for "established" returns two different events.
        """
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self._events):
                    if i in self._claimed or ev.get("event") not in names:
                        continue
                    if any(ev.get(k) != v for k, v in match.items()):
                        continue
                    if predicate is not None and not predicate(ev):
                        continue
                    if consume:
                        self._claimed.add(i)
                    return ev
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._exited:
                    why = "peer exited" if self._exited else f"not seen within {timeout:g} s"
                    raise PeerError(f"event {name!r} {match or ''}: {why}\n{self.describe()}")
                self._cond.wait(remaining)

    def assert_no_event(
        self, name: str | tuple[str, ...], within: float = 1.0, **match: Any
    ) -> None:
        """Fail if an unconsumed event ``name`` (matching ``match``) arrives within ``within`` s."""
        try:
            ev = self.wait_event(name, timeout=within, consume=False, **match)
        except PeerError:
            return
        raise PeerError(f"unexpected event {ev}\n{self.describe()}")


#: The `peer` fixture (tests/interop/conftest.py): start a peer for a user name, stopped at
#: teardown.
PeerFactory = Callable[..., BaresipPeer]


def transfer_call_established(transferee: BaresipPeer, target: BaresipPeer
                              ) -> tuple[Message, Message]:
    """After a REFER: the call `transferee` placed (its `transfer_call` event) and `target`'s
    `incoming` event for it, once both sides have it established."""
    new_call = transferee.wait_event("transfer_call")
    target_in = target.wait_event("incoming", call_id=new_call["call_id"])
    target.wait_event("established", call=target_in["call"])
    transferee.wait_event("established", call=new_call["call"])
    return new_call, target_in
