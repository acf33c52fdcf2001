"""One baresip user agent in its own process, driven by JSON lines on stdin.

Run as a script (``python tests/interop/baresip_peer.py --user alice --sip-port P ...``);
``tests/interop/baresip.py`` starts and drives it. baresip-python allows one Runtime per
process, so every peer of a test is a separate process running this file. It speaks SIP
only through baresip, only on 127.0.0.1, and knows nothing about switchboard.

Protocol: one JSON object per line each way; stdout is flushed after every line.

Commands (stdin) ``{"cmd": NAME, "id": ANY, ...}``; ``id`` is echoed in the reply. A
command acting on a call takes ``"call"`` (this process's native call handle, as in
events; alice's and bob's handles are unrelated numbers) or ``"call_id"`` (SIP Call-ID),
else it picks a default:

=================== =====================================================================
dial                ``uri``, optional ``headers`` {name: value}. Reply: ``call, call_id``
                    as soon as the INVITE is sent.
answer / reject     default: the oldest unanswered incoming call (reject sends 486).
hangup              default: the newest live call.
hold / resume       default: the newest established call. Replies once the re-INVITE's
                    answer SDP arrived (``changed``: false if already in that state);
                    retries while another INVITE transaction is still open. ``timeout``.
transfer            blind: ``uri``. Replies when the transferee's NOTIFY reports the new
                    call's final outcome (ok) or failure (``status``). ``timeout``.
attended_transfer   ``call`` (default: oldest established) is handed over to ``consult``
                    (default: newest other established); both are held first, then
                    REFER with Replaces. Reply: ``call, call_id, consult,
                    consult_call_id``. ``timeout``.
accept_transfer     manual policy: execute the pending REFER. Reply: ``new_call``.
reject_transfer     manual policy: refuse it with ``status`` (default 603).
dtmf                ``digits``.
state               Reply: ``registered``, ``calls``: [{call, call_id, direction, peer,
                    state, on_hold, remote_hold, close_reason, via_transfer}].
register /          (re-)REGISTER or unREGISTER now.
unregister
ping                no-op.
quit                hang up every call, unregister, stop; the last line is ``exit``.
=================== =====================================================================

Replies (stdout): ``{"reply": NAME, "id": ID, "ok": true, ...}`` or ``{"reply": NAME,
"id": ID, "ok": false, "error": "Type: text", ["status": SIP code]}``.

Events (stdout) ``{"event": NAME, "t": unix time, ...}``. Call events carry ``call``,
``call_id`` (SIP Call-ID), ``peer`` (remote URI) and usually ``text`` (baresip's detail):
ready {user, domain, aor, sip_port, contact_uri, registered, outbound_proxy, transport,
pid} |
start_failed {error} | registering | registered {text} | register_failed {text|error} |
unregistering | unregistered | incoming {from, to?} | outgoing | ringing | progress |
answered | established | closed {reason} | remote_hold {on} | local_sdp / remote_sdp
{text: offer|answer} | rtp_established | transfer_request {target, raw, replaces,
method} | transfer_call (the new call the "auto" policy dialed) | transfer_failed |
redirect | refer | dtmf_start / dtmf_end | auto_answer_failed {error} | exit. Other
stack events appear under their lower-cased baresip name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's directory is sys.path[0], and the harness module
# "baresip.py" beside it would shadow the baresip-python package. Drop that entry.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from baresip import (  # noqa: E402
    Account,
    BaresipError,
    Call,
    CallState,
    Config,
    Event,
    Runtime,
    StackEvent,
    UserAgent,
)

logger = logging.getLogger("baresip_peer")

# Stack events that are pure noise for call-control tests.
_SILENT = {Event.VU_TX, Event.VU_RX, Event.CALL_RTCP, Event.AUDIO_WARNING, Event.MODULE}

_EVENT_NAMES = {
    Event.REGISTERING: "registering",
    Event.REGISTER_FAIL: "register_failed",
    Event.UNREGISTERING: "unregistering",
    Event.CALL_INCOMING: "incoming",
    Event.CALL_OUTGOING: "outgoing",
    Event.CALL_RINGING: "ringing",
    Event.CALL_PROGRESS: "progress",
    Event.CALL_ANSWERED: "answered",
    Event.CALL_ESTABLISHED: "established",
    Event.CALL_CLOSED: "closed",
    Event.CALL_TRANSFER: "transfer_request",
    Event.CALL_TRANSFER_FAILED: "transfer_failed",
    Event.CALL_REDIRECT: "redirect",
    Event.CALL_RTPESTAB: "rtp_established",
    Event.CALL_LOCAL_SDP: "local_sdp",
    Event.CALL_REMOTE_SDP: "remote_sdp",
    Event.CALL_DTMF_START: "dtmf_start",
    Event.CALL_DTMF_END: "dtmf_end",
    Event.REFER: "refer",
}


def _parse_refer_to(raw: str) -> dict[str, Any]:
    """Decision-relevant parts of a Refer-To value (target, replaces, method)."""
    value = raw.strip()
    if value.startswith("<"):
        addr, _, params = value[1:].partition(">")
    else:
        addr, _, params = value.partition(";")
    target = addr.partition("?")[0].strip()
    method = "INVITE"
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "method" and val:
            method = val.strip().upper()
    return {"target": target, "raw": raw, "replaces": "replaces=" in addr.lower(), "method": method}


@dataclass
class CallRecord:
    """What this peer knows about one call, advanced by stack events."""

    handle: int
    direction: str  # "incoming" | "outgoing"
    call: Call | None = None
    call_id: str | None = None
    peer: str | None = None
    state: str = "new"  # incoming | outgoing | ringing | early | established | closed
    remote_hold: bool = False
    close_reason: str | None = None
    via_transfer: bool = False
    created: float = field(default_factory=time.monotonic)

    @property
    def live(self) -> bool:
        return self.state != "closed"

    def as_json(self) -> dict[str, Any]:
        return {
            "call": self.handle,
            "call_id": self.call_id,
            "direction": self.direction,
            "peer": self.peer,
            "state": self.state,
            "on_hold": bool(self.call and self.call.is_on_hold),
            "remote_hold": self.remote_hold,
            "close_reason": self.close_reason,
            "via_transfer": self.via_transfer,
        }


class CommandError(Exception):
    """A command that cannot run as asked (unknown call, bad arguments)."""


class Peer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runtime: Runtime | None = None
        self.ua: UserAgent | None = None
        self.calls: dict[int, CallRecord] = {}
        self.registered = False
        self._unregistering = False
        self._quit = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._out_lock = threading.Lock()
        self._sdp_answer_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- output --------------------------------------------------------------

    def emit(self, obj: dict[str, Any]) -> None:
        obj.setdefault("t", round(time.time(), 6))
        line = json.dumps(obj, default=str)
        with self._out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def event(self, name: str, **fields: Any) -> None:
        self.emit({"event": name, **fields})

    # -- set-up --------------------------------------------------------------

    def account(self) -> Account:
        a = self.args
        outbound = a.outbound_proxy or a.registrar
        return Account(
            user=a.user,
            domain=a.domain,
            password=a.password,
            # Rendered as the AOR parameter outbound="<uri>": baresip then sends
            # every request of this account (REGISTER, INVITE, REFER, ...) to that
            # URI with a Route header naming it.
            registrar=outbound,
            reg_interval=a.reg_interval if a.registrar else 0,
            transport=a.transport,
        )

    def extra_config(self) -> str:
        """baresip's own configuration lines: where it listens (UDP and TCP on the port; TLS
        on a port of its choosing, named in its Contact), and how it checks TLS servers."""
        a = self.args
        lines = [f"sip_listen 127.0.0.1:{a.sip_port}"]
        if a.ca_file:
            lines.append(f"sip_cafile {a.ca_file}")
        if a.transport == "tls":
            lines.append(f"sip_verify_server {'yes' if a.verify_server else 'no'}")
        return "".join(line + "\n" for line in lines)

    async def start(self) -> None:
        a = self.args
        config = Config(
            net_interface="127.0.0.1",
            native_log_level=a.native_log_level,
            sip_trace=a.sip_trace,
            max_concurrent_calls=a.max_calls,
            extra_config_text=self.extra_config(),
        )
        self.runtime = Runtime(native_log_level=a.native_log_level)
        await self.runtime.start(config)
        account = self.account()
        self.ua = await UserAgent.create(self.runtime, account, transfer_policy=a.transfer_policy)
        self.ua.on(self._on_stack_event)
        self.ua.on_incoming(self._on_incoming)
        self.ua.on_transfer_call(self._on_transfer_call)
        registered = False
        if a.registrar:
            try:
                await self.ua.register(timeout=a.register_timeout)
                registered = True
            except BaresipError as exc:
                self.event("register_failed", error=f"{type(exc).__name__}: {exc}")
        self.registered = registered
        self.event(
            "ready",
            user=a.user,
            domain=a.domain,
            aor=f"sip:{a.user}@{a.domain}",
            sip_port=a.sip_port,
            contact_uri=f"sip:{a.user}@127.0.0.1:{a.sip_port}",
            registered=registered,
            outbound_proxy=account.registrar,
            transfer_policy=a.transfer_policy,
            auto_answer=a.auto_answer,
            transport=a.transport,
            pid=os.getpid(),
        )

    # -- stack events --------------------------------------------------------

    def _record(self, handle: int, direction: str) -> CallRecord:
        rec = self.calls.get(handle)
        if rec is None:
            rec = CallRecord(handle=handle, direction=direction)
            self.calls[handle] = rec
        return rec

    def _on_stack_event(self, ev: StackEvent) -> None:
        kind = ev.event
        if kind in _SILENT:
            return
        fields: dict[str, Any] = {}
        rec: CallRecord | None = None
        if ev.call:
            rec = self._record(ev.call, "incoming" if kind is Event.CALL_INCOMING else "outgoing")
            if ev.call_id and not rec.call_id:
                rec.call_id = ev.call_id
            if ev.peer and not rec.peer:
                rec.peer = ev.peer
            fields["call"] = ev.call
            fields["call_id"] = rec.call_id
            fields["peer"] = ev.peer or rec.peer
        if ev.text is not None:
            fields["text"] = ev.text
        if ev.from_ is not None:
            fields["from"] = ev.from_
        if ev.to is not None:
            fields["to"] = ev.to
        if ev.headers:
            fields["headers"] = ev.headers

        name = _EVENT_NAMES.get(kind, kind.name.lower())
        if kind is Event.REGISTER_OK:
            name = "unregistered" if self._unregistering else "registered"
        elif kind is Event.CALL_INCOMING:
            assert rec is not None
            rec.direction = "incoming"  # earlier events (remote SDP) may have made a record
            rec.state = "incoming"
            fields.setdefault("from", ev.peer)
        elif kind is Event.CALL_OUTGOING and rec is not None:
            rec.state = "outgoing"
        elif kind is Event.CALL_RINGING and rec is not None:
            rec.state = "ringing"
        elif kind is Event.CALL_PROGRESS and rec is not None:
            rec.state = "early"
        elif kind is Event.CALL_ESTABLISHED and rec is not None:
            rec.state = "established"
        elif kind is Event.CALL_CLOSED and rec is not None:
            rec.state = "closed"
            rec.close_reason = ev.text
            fields["reason"] = ev.text
        elif kind in (Event.CALL_HOLD, Event.CALL_RESUME):
            name = "remote_hold"
            on = kind is Event.CALL_HOLD
            fields["on"] = on
            if rec is not None:
                rec.remote_hold = on
        elif kind is Event.CALL_TRANSFER and ev.text:
            fields.update(_parse_refer_to(ev.text))
        elif kind is Event.CALL_REMOTE_SDP and ev.text == "answer":
            for call_handle, fut in list(self._sdp_answer_waiters):
                if call_handle == ev.call and not fut.done():
                    fut.set_result(None)
        self.event(name, **fields)

        if kind is Event.CALL_INCOMING and self.args.auto_answer and rec is not None:
            self._spawn(self._auto_answer(rec))

    def _adopt(self, rec: CallRecord, call: Call) -> None:
        """Attach a Call built from a command's completion (dial, transfer) to its record.

        baresip-python race: such a Call subscribes to stack events only once the
        awaiting task resumes, and under load the call's RINGING/ESTABLISHED/CLOSED
        events are dispatched before that, so its own state would stay OUTGOING for
        ever (hold/transfer then refuse). Our raw listener saw them all: copy them over.
        """
        rec.call = call
        if rec.state == "established" and call.state is CallState.OUTGOING:
            call._state = CallState.ESTABLISHED
        elif rec.state == "closed" and call.state is not CallState.CLOSED:
            call._state = CallState.CLOSED
            call._close_reason = rec.close_reason
        if rec.remote_hold:
            call._remote_on_hold = True

    def _on_incoming(self, call: Call) -> None:
        rec = self._record(call.handle, "incoming")
        rec.call = call
        rec.call_id = rec.call_id or call.call_id
        rec.peer = rec.peer or call.peer

    def _on_transfer_call(self, call: Call) -> None:
        # The "auto" transfer policy dialed a REFER's target: a brand new call.
        rec = self._record(call.handle, "outgoing")
        self._adopt(rec, call)
        rec.via_transfer = True
        rec.peer = rec.peer or call.peer
        self.event("transfer_call", call=call.handle, call_id=rec.call_id, peer=call.peer)

    async def _auto_answer(self, rec: CallRecord) -> None:
        # on_incoming runs after our raw listener; give it a loop turn.
        for _ in range(100):
            if rec.call is not None:
                break
            await asyncio.sleep(0.01)
        if rec.call is None:
            self.event("auto_answer_failed", call=rec.handle, error="no Call object")
            return
        if self.args.answer_delay:
            await asyncio.sleep(self.args.answer_delay)
        try:
            await rec.call.answer()
        except BaresipError as exc:
            self.event("auto_answer_failed", call=rec.handle, error=f"{type(exc).__name__}: {exc}")

    # -- commands ------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handle_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict) or not isinstance(msg.get("cmd"), str):
                raise ValueError("expected an object with a string 'cmd'")
        except ValueError as exc:
            self.emit({"reply": None, "id": None, "ok": False, "error": f"bad command: {exc}"})
            return
        self._spawn(self._run_command(msg))

    async def _run_command(self, msg: dict[str, Any]) -> None:
        cmd = msg["cmd"]
        reply: dict[str, Any] = {"reply": cmd, "id": msg.get("id")}
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            reply.update(ok=False, error=f"unknown command {cmd!r}")
            self.emit(reply)
            return
        try:
            result = await handler(msg)
        except (BaresipError, CommandError, ValueError) as exc:
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            status = getattr(exc, "status", None)
            if status is not None:
                reply["status"] = status
        except Exception as exc:  # report, never die on a command
            logger.exception("command %s crashed", cmd)
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            reply["ok"] = True
            if result:
                reply.update(result)
        self.emit(reply)

    def _pick_call(
        self, msg: dict[str, Any], *, states: tuple[str, ...] | None = None, oldest: bool = False
    ) -> CallRecord:
        """The call a command names, else the newest (or oldest) live one in ``states``."""
        if msg.get("call") is not None:
            rec = self.calls.get(int(msg["call"]))
            if rec is None:
                raise CommandError(f"no call with handle {msg['call']}")
            return rec
        if msg.get("call_id") is not None:
            for rec in self.calls.values():
                if rec.call_id == msg["call_id"]:
                    return rec
            raise CommandError(f"no call with Call-ID {msg['call_id']!r}")
        candidates = [
            r for r in self.calls.values() if r.live and (states is None or r.state in states)
        ]
        if not candidates:
            raise CommandError(f"no live call{' in state ' + '/'.join(states) if states else ''}")
        candidates.sort(key=lambda r: r.created)
        return candidates[0] if oldest else candidates[-1]

    @staticmethod
    def _call_of(rec: CallRecord) -> Call:
        if rec.call is None:
            raise CommandError(f"call {rec.handle} has no Call object yet")
        return rec.call

    async def cmd_dial(self, msg: dict[str, Any]) -> dict[str, Any]:
        uri = msg.get("uri")
        if not isinstance(uri, str) or not uri:
            raise CommandError("dial needs 'uri'")
        assert self.ua is not None
        headers = msg.get("headers") or None
        call = await self.ua.dial(uri, headers=headers)
        rec = self._record(call.handle, "outgoing")
        self._adopt(rec, call)
        rec.peer = rec.peer or uri
        if rec.state == "new":
            rec.state = "outgoing"
        return {"call": call.handle, "call_id": rec.call_id or call.call_id}

    async def cmd_answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg, states=("incoming",), oldest=True)
        await self._call_of(rec).answer()
        return {"call": rec.handle, "call_id": rec.call_id}

    async def cmd_reject(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg, states=("incoming",), oldest=True)
        await self._call_of(rec).reject()
        return {"call": rec.handle, "call_id": rec.call_id}

    async def cmd_hangup(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg)
        await self._call_of(rec).hangup()
        return {"call": rec.handle, "call_id": rec.call_id}

    async def _set_hold(self, msg: dict[str, Any], hold: bool) -> dict[str, Any]:
        """Send the hold/resume re-INVITE and reply once its answer SDP arrived.

        baresip refuses (and rolls back) a re-INVITE while another INVITE transaction
        of the call is still open ("session refresh ... in flight"), e.g. a resume
        sent right after a hold. Retry until ``timeout`` instead of failing the test.
        """
        rec = self._pick_call(msg, states=("established",))
        call = self._call_of(rec)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(msg.get("timeout", 10))
        if call.is_on_hold == hold:
            return {"call": rec.handle, "call_id": rec.call_id, "changed": False}
        while True:
            waiter = (rec.handle, loop.create_future())
            self._sdp_answer_waiters.append(waiter)
            try:
                try:
                    await (call.hold() if hold else call.resume())
                except BaresipError as exc:
                    if "in flight" in str(exc) and loop.time() < deadline:
                        await asyncio.sleep(0.05)
                        continue
                    raise
                remaining = max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(waiter[1], remaining)
                except TimeoutError:
                    raise CommandError(
                        f"{'hold' if hold else 'resume'} re-INVITE sent but no answer SDP "
                        f"within {msg.get('timeout', 10)} s"
                    ) from None
                return {"call": rec.handle, "call_id": rec.call_id, "changed": True}
            finally:
                self._sdp_answer_waiters.remove(waiter)

    async def cmd_hold(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self._set_hold(msg, True)

    async def cmd_resume(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self._set_hold(msg, False)

    async def cmd_transfer(self, msg: dict[str, Any]) -> dict[str, Any]:
        uri = msg.get("uri")
        if not isinstance(uri, str) or not uri:
            raise CommandError("transfer needs 'uri'")
        rec = self._pick_call(msg, states=("established",))
        # Returns once the far end reports the new call's outcome (NOTIFY sipfrag 200).
        await self._call_of(rec).transfer(uri, timeout=float(msg.get("timeout", 30)))
        return {"call": rec.handle, "call_id": rec.call_id}

    async def cmd_attended_transfer(self, msg: dict[str, Any]) -> dict[str, Any]:
        # "call": the leg whose peer is handed over (default: the oldest established);
        # "consult": the consultation leg (default: the newest other established).
        rec = self._pick_call(msg, states=("established",), oldest=True)
        if msg.get("consult") is not None:
            consult = self._pick_call({"call": msg["consult"]})
        else:
            others = [
                r
                for r in self.calls.values()
                if r.live and r.state == "established" and r.handle != rec.handle
            ]
            if not others:
                raise CommandError("attended_transfer needs a second established call")
            consult = max(others, key=lambda r: r.created)
        await self._call_of(rec).attended_transfer(
            self._call_of(consult), timeout=float(msg.get("timeout", 30))
        )
        return {
            "call": rec.handle,
            "call_id": rec.call_id,
            "consult": consult.handle,
            "consult_call_id": consult.call_id,
        }

    async def cmd_accept_transfer(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg, states=("established",))
        new = await self._call_of(rec).accept_transfer()
        new_rec = self._record(new.handle, "outgoing")
        self._adopt(new_rec, new)
        new_rec.via_transfer = True
        return {"call": rec.handle, "new_call": new.handle}

    async def cmd_reject_transfer(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg, states=("established",))
        await self._call_of(rec).reject_transfer(int(msg.get("status", 603)))
        return {"call": rec.handle}

    async def cmd_dtmf(self, msg: dict[str, Any]) -> dict[str, Any]:
        rec = self._pick_call(msg, states=("established",))
        await self._call_of(rec).send_dtmf(str(msg.get("digits", "")))
        return {"call": rec.handle}

    async def cmd_state(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "registered": self.registered,
            "calls": [r.as_json() for r in sorted(self.calls.values(), key=lambda r: r.created)],
        }

    async def cmd_register(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.ua is not None
        await self.ua.register(timeout=self.args.register_timeout)
        self.registered = True
        return {}

    async def cmd_unregister(self, msg: dict[str, Any]) -> dict[str, Any]:
        await self._unregister()
        return {}

    async def cmd_ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def cmd_quit(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._quit.set()
        return {}

    # -- shutdown ------------------------------------------------------------

    async def _unregister(self) -> None:
        assert self.ua is not None
        if not self.registered:
            return
        self._unregistering = True
        try:
            await self.ua.unregister(timeout=self.args.register_timeout)
        finally:
            self._unregistering = False
        self.registered = False

    async def shutdown(self) -> None:
        for rec in list(self.calls.values()):
            if rec.live and rec.call is not None:
                with contextlib.suppress(BaresipError):
                    await rec.call.hangup()
        if self.ua is not None and self.registered:
            with contextlib.suppress(BaresipError):
                await self._unregister()
        for task in list(self._tasks):
            task.cancel()
        if self.runtime is not None:
            with contextlib.suppress(BaresipError):
                await self.runtime.close()

    async def wait_quit(self) -> None:
        await self._quit.wait()

    def request_quit(self) -> None:
        self._quit.set()


async def _read_stdin(peer: Peer) -> None:
    """Feed stdin lines to the peer; EOF means quit."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        # Not a pipe/tty/socket (a regular file, say): read it on a thread.
        def pump() -> None:
            fd = sys.stdin.fileno()
            while chunk := os.read(fd, 65536):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
            loop.call_soon_threadsafe(reader.feed_eof)

        threading.Thread(target=pump, name="stdin", daemon=True).start()
    while line := await reader.readline():
        peer.handle_line(line)
    peer.request_quit()


async def amain(args: argparse.Namespace) -> int:
    peer = Peer(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, peer.request_quit)
    try:
        await peer.start()
    except Exception as exc:
        logger.exception("start failed")
        peer.event("start_failed", error=f"{type(exc).__name__}: {exc}")
        await peer.shutdown()
        return 2
    stdin_task = loop.create_task(_read_stdin(peer))
    await peer.wait_quit()
    stdin_task.cancel()
    await peer.shutdown()
    peer.event("exit")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--user", required=True)
    p.add_argument("--sip-port", type=int, required=True, help="UDP/TCP port on 127.0.0.1")
    p.add_argument(
        "--domain",
        help="AOR domain (default: the registrar's host, else 127.0.0.1)",
    )
    p.add_argument("--password", default="")
    p.add_argument("--registrar", help="e.g. sip:127.0.0.1:5070; enables REGISTER")
    p.add_argument(
        "--outbound-proxy",
        help="route every request via this URI (default: --registrar, if given)",
    )
    p.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                   help="toward the registrar / outbound proxy")
    p.add_argument("--ca-file", help="CAs that sign the TLS servers it connects to")
    p.add_argument("--no-verify-server", dest="verify_server", action="store_false",
                   help="with --transport tls: accept any server certificate")
    p.add_argument("--reg-interval", type=int, default=3600)
    p.add_argument("--register-timeout", type=float, default=10.0)
    p.add_argument("--transfer-policy", choices=("manual", "auto", "reject"), default="manual")
    p.add_argument("--auto-answer", action="store_true")
    p.add_argument("--answer-delay", type=float, default=0.0, help="seconds, with --auto-answer")
    p.add_argument("--max-calls", type=int, default=4)
    p.add_argument("--sip-trace", action="store_true", help="log every SIP message to stderr")
    p.add_argument(
        "--native-log-level", choices=("debug", "info", "warning", "error"), default="warning"
    )
    p.add_argument("--log-level", default="INFO", help="Python logging level for stderr")
    args = p.parse_args(argv)
    if args.domain is None:
        args.domain = "127.0.0.1"
        if args.registrar:
            host = args.registrar.split(":", 1)[1] if ":" in args.registrar else args.registrar
            host = host.split(";", 1)[0].split(":", 1)[0].split("@")[-1]
            args.domain = host or "127.0.0.1"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format=f"%(asctime)s {args.user} %(name)s %(levelname)s %(message)s",
    )
    if args.sip_trace:
        logging.getLogger("baresip.native.sip").setLevel(logging.DEBUG)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
