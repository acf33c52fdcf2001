"""Coverage-guided fuzzing (atheris / libFuzzer) of whole call flows, each step followed by
every read-out.

One input is one SIP message put into a call flow at one step. Its first byte picks the flow
(a call with re-INVITE, INFO and BYE; a blind transfer answered 202 with NOTIFYs and the new
call; a REFER refused, then a hold; hold and unhold; an attended transfer; an early dialog
cancelled; a registration and out-of-dialog requests), its second byte the message step, and
whether the input replaces the honest message there or goes in just before it, over UDP or
TCP; the rest is the message. The flow runs through one sans-IO `Proxy` with a fake clock.
User agents are reactive: each honest message is built from what that UA received from the
proxy (answers copy the request's Via, From, To, Call-ID and CSeq, ACKs and in-dialog requests
follow the dialog as the UA saw it, a transferee calls the Refer-To it was given), so a
mutated INVITE's bytes live on in the dialog, the transfer and the events; call operations
(transfer, attended transfer, hold, unhold) run between steps. Then the clock runs past every
timer and the dialog lifetime.

After each step, every read-out of what happened must work:

- every event (`E_DLG_STATE_CHANGED` as the worker builds it, the call events) encodes
  (`events/envelope.py`, which every sink type sends) to valid UTF-8 JSON that shows each value
  as `switchboard.readout` says; the events also go through the call metrics and a Ray batch
  (msgpack) unchanged;
- every datagram in or out encodes as HEP (`hep.py`), payload intact;
- every snapshot the proxy hands out (`track_changes` / `take_dirty`) survives msgpack
  (`readout.pack`, what the Ray runtime sends) unchanged and restores into a fresh proxy
  (`restore_dialog`) holding what the original holds, which can end it;

and after the fuzzed step, at the end of the flow and after the timers, also:

- `dialog:list` (whole, and by Call-ID) and `statistics:get` answered by the MI dispatcher
  (`dispatch_parts`, what the HTTP server sends) as valid UTF-8 JSON equal to what
  `dialog_info` / `Proxy.statistics` hold, wire text shown as `readout` says;
- `/metrics` rendered in both exposition formats, valid UTF-8 that prometheus-client parses;
- JSON and text log lines of records carrying the message's and the dialogs' wire values.

Any exception escaping the core (`receive` handles `ParseError` itself; a call operation may
refuse with `Refused`), a datagram addressed to something a socket cannot send to, or a
failed read-out is a crash: libFuzzer stops and writes the input to `crash-<sha1>`.

Why atheris and not a mutator of our own: the flow is rebuilt from scratch for every input
(fresh proxy, counter for randomness, fake clock), so an input is deterministic and replays
alone; libFuzzer's coverage feedback then steers mutations into the core's and the read-outs'
branches, and its byte-level mutations (with `sip.dict`) are what puts bytes that are not
UTF-8 into every header.

    python tests/fuzz/fuzz_flows.py [libFuzzer flags] [CORPUS_DIR ...]

The seeds (the honest message of every step, and the recorded INVITEs of tests/data/readout
at the first step of every flow) are generated at start and added after the named
directories. As fuzz_parser.py, the core runs from its source (SWITCHBOARD_PURE=1) for
coverage. See README.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import atheris

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # runnable from anywhere without installing the package
    sys.path.insert(0, str(REPO))
from tests.support.fuzz import libfuzzer_arguments, load_core  # noqa: E402

load_core("fuzz_flows")
with atheris.instrument_imports(include=["switchboard"]):
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from switchboard.actors.dialog import dialog_info
    from switchboard.events.envelope import encode_event
    from switchboard.events.opensips import opensips_event
    from switchboard.hep import encode_hep3
    from switchboard.logs import JsonFormatter, TextFormatter
    from switchboard.metrics import CallMetrics, SwitchboardCollector, build_labels
    from switchboard.mi.commands import REGISTRY
    from switchboard.mi.dispatch import dispatch_parts
    from switchboard.mi.registry import CommandContext
    from switchboard.readout import pack, unpack
    from switchboard.sip.callops import CallOps
    from switchboard.sip.dialog import Dialog, DialogStateChanged, Leg
    from switchboard.sip.errors import ParseError
    from switchboard.sip.events import CallEvent
    from switchboard.sip.message import Message, Request, Response, parse_message
    from switchboard.sip.operations import Refused
    from switchboard.sip.proxy import Proxy, ProxyConfig
    from switchboard.sip.uri import SipUri
    from switchboard.sip.wire import Address, Datagram

DATA = REPO / "tests" / "data" / "readout"
DICTIONARY = Path(__file__).with_name("sip.dict")

PROXY_UDP = Address("udp", "127.0.0.1", 5060)
PROXY_TCP = Address("tcp", "127.0.0.1", 5060)
# Dual stack: with IPv4 sockets only, the core relays a request for an IPv6 host from an
# IPv4 socket (`Proxy._local_for` falls back to any socket), which no socket can send.
CONFIG = ProxyConfig(listeners=(PROXY_UDP, PROXY_TCP, Address("udp", "::1", 5060),
                                Address("tcp", "::1", 5060)), dialog_lifetime=300.0)
START = 100.0
WALL = 1_767_225_600.0 - START  # core time + WALL = wall time (2026-01-01)
STEP = 0.01  # the clock between two steps: no retransmission falls due inside a flow
SETTLE = (START + 1.0, START + 40.0, START + 400.0)  # then past timers B/F and the lifetime
MAX_TIMER_RUNS = 5000


class FlowFailure(AssertionError):
    """A read-out failed or the core did what it must not."""


def wire(text: str) -> bytes:
    """Header text back to the bytes it was parsed from (the parser's surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


def shown(value: Any) -> Any:
    """What a JSON read-out must show for `value`: each byte that is not UTF-8 (a lone
    surrogate U+DC80..U+DCFF) as the four characters `\\xNN`, everything else as it is."""
    if isinstance(value, str):
        if value.isascii():
            return value
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c
                       for c in value)
    if isinstance(value, list | tuple):
        return [shown(v) for v in value]
    if isinstance(value, dict):
        return {shown(k): shown(v) for k, v in value.items()}
    return value


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that only ever yields to let the loop turn (`asyncio.sleep(0)`)."""
    while True:
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value


def sdp(owner: str, version: int, port: int, direction: str = "sendrecv") -> bytes:
    return (f"v=0\r\no={owner} 1000 {version} IN IP4 127.0.0.1\r\ns=-\r\n"
            f"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
            f"a=rtpmap:0 PCMU/8000\r\na={direction}\r\n").encode()


# -- user agents ------------------------------------------------------------------------------


class UA:
    """A user agent that answers and follows dialogs from what it received."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.address = Address("udp", "127.0.0.1", port)
        self.contact = f"sip:{name}@127.0.0.1:{port}"
        self.aor = f"sip:{name}@127.0.0.1:{port}"  # routable as it is (attended transfer)
        self.tag = f"{name}-tag"
        self.new_tag = f"{name}-new"  # the From tag of the call it places when transferred
        self.inbox: list[Message] = []
        self.sent: dict[str, Request] = {}  # Call-ID -> the last initial INVITE it sent
        self.cseq: dict[str, int] = {}

    def next_cseq(self, call_id: str) -> int:
        self.cseq[call_id] = self.cseq.get(call_id, 0) + 1
        return self.cseq[call_id]

    def last_request(self, method: str, call_id: str | None = None,
                     initial: bool = False) -> Request | None:
        for msg in reversed(self.inbox):
            if not isinstance(msg, Request) or msg.method != method:
                continue
            try:
                if call_id is not None and msg.call_id != call_id:
                    continue
                if initial and msg.to_tag is not None:
                    continue
            except ParseError:
                continue
            return msg
        return None

    def answer_to(self, method: str, call_id: str, success: bool = True) -> Response | None:
        """The last final answer (2xx when `success`) to our `method` in call `call_id`."""
        for msg in reversed(self.inbox):
            if not isinstance(msg, Response) or msg.status < 200:
                continue
            if success and msg.status >= 300:
                continue
            try:
                if msg.call_id == call_id and msg.cseq.method == method and msg.to_tag:
                    return msg
            except ParseError:
                continue
        return None


def request_bytes(method: str, ruri: str, sender: UA, branch: str, *, from_: str, to: str,
                  call_id: str, cseq: int, routes: Iterable[str] = (),
                  contact: bool = True, extra: Iterable[str] = (), body: bytes = b"",
                  content_type: str = "application/sdp") -> bytes:
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP {sender.address.host}:{sender.address.port};branch={branch}"]
    lines += [f"Route: {r}" for r in routes]
    lines += ["Max-Forwards: 70", f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}",
              f"CSeq: {cseq} {method}"]
    if contact:
        lines.append(f"Contact: <{sender.contact}>")
    lines += list(extra)
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return wire("\r\n".join(lines) + "\r\n\r\n") + body


def response_bytes(req: Request, ua: UA, status: int, reason: str, body: bytes = b"",
                   extra: Iterable[str] = ()) -> bytes:
    """RFC 3261 §8.2.6.2: Via, From, To (with our tag), Call-ID and CSeq from the request;
    Record-Route echoed and our Contact on a dialog-creating answer."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to") or ""
    if status > 100 and req.to_tag is None:
        to += f";tag={ua.tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}",
              f"CSeq: {req.get('cseq')}"]
    if status > 100 and req.method in ("INVITE", "SUBSCRIBE", "REFER"):
        lines += [f"Record-Route: {r}" for r in req.get_all("record-route")]
        lines.append(f"Contact: <{ua.contact}>")
    lines += list(extra)
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return wire("\r\n".join(lines) + "\r\n\r\n") + body


# -- the world: one proxy, its clock, the user agents and everything read out -------------------


class World:
    def __init__(self) -> None:
        numbers = iter(range(1, 1 << 30))
        self.proxy = Proxy(CONFIG, lambda: f"r{next(numbers)}")
        CallOps(self.proxy)
        self.proxy.track_changes()
        self.now = START
        self.uas = {name: UA(name, port) for name, port in
                    (("alice", 5061), ("bob", 5062), ("carol", 5063))}
        self.branches = iter(range(1, 1 << 30))
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.call_metrics = CallMetrics(self._start_time_of, lambda: self.now)
        self.wire_values: list[str] = []  # header values of the fuzzed message, for log lines
        self.checked_events = 0

    def _start_time_of(self, dialog_id: str) -> float | None:
        dialog = self.proxy.dialogs.by_id(dialog_id)
        return dialog.start_time if dialog is not None else None

    def ua(self, name: str) -> UA:
        return self.uas[name]

    def branch(self, ua: UA) -> str:
        return f"z9hG4bK-{ua.name}{next(self.branches)}"

    # -- moving messages ---------------------------------------------------------------------

    def send(self, data: bytes, sender: UA, tcp: bool = False) -> None:
        source = sender.address._replace(transport="tcp") if tcp else sender.address
        local = PROXY_TCP if tcp else PROXY_UDP
        check_hep(data, source, local, self.now)
        with contextlib.suppress(ParseError):
            msg = parse_message(data, datagram=not tcp)
            if isinstance(msg, Request) and msg.method == "INVITE" and msg.to_tag is None:
                sender.sent[msg.call_id] = msg
        self.proxy.receive(data, source, local, self.now)
        self.collect()

    def collect(self) -> None:
        proxy = self.proxy
        out = list(proxy.outbox)
        del proxy.outbox[:]
        for dgram in out:
            self.deliver(dgram)
        events = list(proxy.events)
        del proxy.events[:]
        for ev in events:
            self.events.append(event_params(ev))
        check_events(self)
        check_snapshots(self)

    def deliver(self, dgram: Datagram) -> None:
        check_datagram(dgram, self.now)
        for ua in self.uas.values():
            if (dgram.dest.host, dgram.dest.port) == (ua.address.host, ua.address.port):
                with contextlib.suppress(ParseError):
                    ua.inbox.append(parse_message(dgram.data, datagram=dgram.dest.transport
                                                  == "udp"))
                return

    def settle(self) -> None:
        """Run the clock past every retransmission, transaction end and the lifetime."""
        runs = 0
        for until in SETTLE:
            while (deadline := self.proxy.next_deadline()) is not None and deadline <= until:
                self.now = max(self.now, deadline)
                self.proxy.handle_timers(self.now)
                self.collect()
                runs += 1
                if runs > MAX_TIMER_RUNS:
                    raise FlowFailure("timers keep falling due")
            self.now = until


def event_params(ev: DialogStateChanged | CallEvent) -> tuple[str, dict[str, Any]]:
    """An event as the worker publishes it (`actors/worker.py` `Worker.flush`)."""
    return opensips_event(ev)


# -- read-outs ---------------------------------------------------------------------------------


def check_hep(data: bytes, source: Address, dest: Address, now: float) -> None:
    packet = encode_hep3(data, source, dest, now + WALL)
    if packet[:4] != b"HEP3" or int.from_bytes(packet[4:6], "big") != len(packet):
        raise FlowFailure("HEP packet header")
    if not packet.endswith(data):
        raise FlowFailure("HEP payload is not the message")


def unsendable(dgram: Datagram) -> str | None:
    """Why no socket of ours can send `dgram` (None: one can). A host that is not an IP
    literal makes the transport look the name up or raise; so do a port out of range and
    an address of the other family than the socket."""
    dest, local = dgram.dest, dgram.local
    if local not in CONFIG.listeners or local.transport != dest.transport:
        return "no such socket"
    if not 0 < dest.port <= 0xFFFF:
        return "port"
    try:
        ip = ipaddress.ip_address(dest.host)
    except ValueError:
        return "not an IP address"
    if (ip.version == 6) != (":" in local.host):
        return "other address family"
    return None


def check_datagram(dgram: Datagram, now: float) -> None:
    """HEP captures what the core sends; what no socket could send (a core defect, see
    `finding`) it may only refuse with ValueError, which `HepMirror` counts as dropped."""
    problem = unsendable(dgram)
    if problem is not None:
        finding("unsendable", f"{problem}: {dgram.dest!r} from {dgram.local!r}")
    try:
        check_hep(dgram.data, dgram.local, dgram.dest, now)
    except ValueError as exc:
        if problem is None:
            raise FlowFailure(f"HEP cannot capture a datagram to {dgram.dest!r}: {exc}") from None


# What the input being run is, and where findings go (`main`).
CURRENT = [b""]
FINDINGS: dict[str, Path | None] = {"dir": None}
_found: set[str] = set()
MAX_FINDINGS = 20


def finding(kind: str, detail: str) -> None:
    """A core defect outside the read-outs (a datagram no socket can send): a crash when
    FUZZ_FLOWS_STRICT=1, else the first input of each kind and detail shape is kept as
    `finding-<kind>-<sha1>` beside the crash files, and the run goes on."""
    if os.environ.get("FUZZ_FLOWS_STRICT", "") not in ("", "0"):
        raise FlowFailure(f"{kind}: {detail}")
    shape = kind + ":" + detail.split(":", 1)[0]
    directory = FINDINGS["dir"]
    if shape in _found or directory is None or len(_found) >= MAX_FINDINGS:
        return
    _found.add(shape)
    name = f"finding-{kind}-{hashlib.sha1(CURRENT[0]).hexdigest()}"
    directory.joinpath(name).write_bytes(CURRENT[0])
    print(f"fuzz_flows: {kind}: {detail} (input in {directory / name})", file=sys.stderr)


def check_json(data: bytes, expected: Any, what: str) -> Any:
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise FlowFailure(f"{what}: not UTF-8 JSON: {exc}: {data[:300]!r}") from None
    if value != expected:
        raise FlowFailure(f"{what}: {value!r} != {expected!r}")
    return value


def check_events(world: World) -> None:
    new = world.events[world.checked_events:]
    if not new:
        return
    world.checked_events = len(world.events)
    for name, params in new:
        check_json(encode_event(name, params),
                   shown({"jsonrpc": "2.0", "method": name, "params": params}), name)
        world.call_metrics.observe(name, params)
    # A Ray worker sends its events to the controller in msgpack batches.
    batch = [[name, params] for name, params in new]
    if unpack(pack(batch)) != batch:
        raise FlowFailure("an event batch changed through msgpack")


def check_snapshots(world: World) -> None:
    snapshots, _dropped = world.proxy.take_dirty(world.now)
    for snap in snapshots:
        again = unpack(pack(snap))
        if again != snap:
            raise FlowFailure(f"a snapshot changed through msgpack: {again!r} != {snap!r}")
        # Restored from msgpack, the dialog holds what the original holds (so relays the
        # same bytes), and a proxy can end it.
        fresh = Proxy(CONFIG, _counter())
        CallOps(fresh)
        dialog = fresh.restore_dialog(again, world.now)
        if dialog is None:
            raise FlowFailure(f"a confirmed dialog did not restore: {again!r}")
        original = _original(world, dialog)
        if _listed(dialog) != _listed(original) or any(
                _leg(mine) != _leg(theirs) for mine, theirs in
                ((dialog.caller, original.caller), (dialog.callee, original.callee))):
            raise FlowFailure("a dialog restored from msgpack differs from the original")
        fresh.end_dialog(dialog.id, world.now)
        for dgram in fresh.outbox:
            check_datagram(dgram, world.now)


def _counter() -> Callable[[], str]:
    numbers = iter(range(1, 1 << 30))
    return lambda: f"r{next(numbers)}"


def _wall(t: float) -> float:
    return t + WALL


def _listed(dialog: Dialog) -> dict[str, Any]:
    """`dialog_info` without the times (a restored dialog's are rounded to milliseconds)."""
    info = dialog_info(dialog, _wall)
    for key in ("timestart", "datestart", "timeout", "dateout"):
        del info[key]
    return info


def _leg(leg: Leg) -> tuple[Any, ...]:
    return (leg.tag, leg.contact, leg.route_set, leg.cseq, leg.sdp, leg.address,
            leg.cseq_offset, leg.sdp_version_sent)


def _original(world: World, restored: Dialog) -> Dialog:
    dialog = world.proxy.dialogs.by_id(restored.id)
    if dialog is None:
        raise FlowFailure("a snapshot of a dialog that is not there")
    return dialog


class FuzzApi:
    """The ControlApi the MI commands call, over the world's proxy (`Worker.list_dialogs`,
    `BuiltWorker.statistics`)."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def list_dialogs(self, callid: str | None = None,
                           from_tag: str | None = None) -> list[dict[str, Any]]:
        return list_dialogs(self.world, callid, from_tag)

    async def statistics(self) -> dict[str, int]:
        return statistics(self.world)


def list_dialogs(world: World, callid: str | None = None,
                 from_tag: str | None = None) -> list[dict[str, Any]]:
    out = []
    for dialog in list(world.proxy.dialogs):
        if not dialog.active:
            continue
        if callid is not None and dialog.call_id != callid:
            continue
        if from_tag is not None and dialog.caller.tag != from_tag:
            continue
        out.append(dialog_info(dialog, _wall))
    return out


def statistics(world: World) -> dict[str, int]:
    stats = world.proxy.statistics()
    stats.update(world.call_metrics.statistics())
    return dict(sorted(stats.items()))


def mi(world: World, method: str, params: dict[str, Any] | None = None) -> bytes:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 7}
    if params is not None:
        request["params"] = params
    ctx = CommandContext(api=FuzzApi(world), registry=REGISTRY)  # type: ignore[arg-type]
    # ensure_ascii: a Call-ID with a lone surrogate travels as a JSON escape, as a client's.
    parts = run(dispatch_parts(json.dumps(request).encode(), ctx))
    if parts is None:
        raise FlowFailure(f"no MI answer to {method}")
    return b"".join(parts)


METRICS = SwitchboardCollector(build_labels("fuzz"))
REGISTRY_METRICS = CollectorRegistry()
REGISTRY_METRICS.register(METRICS)
LOG_FORMATS = (JsonFormatter(), TextFormatter())


def check_state(world: World, metrics: bool = False) -> None:
    """dialog:list, statistics:get and log lines now; /metrics too when `metrics`."""
    dialogs = list_dialogs(world)
    answer = {"jsonrpc": "2.0", "result": {"Dialogs": dialogs}, "id": 7}
    check_json(mi(world, "dialog:list"), shown(answer), "dialog:list")
    for info in dialogs[:2]:
        one = list_dialogs(world, info["callid"])[0]
        check_json(mi(world, "dialog:list", {"callid": info["callid"]}),
                   shown({"jsonrpc": "2.0", "result": {"Dialog": one}, "id": 7}),
                   "dialog:list callid")
    stats = statistics(world)
    check_json(mi(world, "statistics:get", {"statistics": ["all"]}),
               {"jsonrpc": "2.0", "result": stats, "id": 7}, "statistics:get")

    if metrics:
        check_metrics(world, stats)
    values = list(world.wire_values)
    for info in dialogs[:2]:
        values += [info["from_uri"], info["caller_contact"], info["callid"], info["caller_tag"]]
    check_logs(values)


def check_metrics(world: World, stats: dict[str, int]) -> None:
    """Both exposition formats. Labels never carry wire text (metrics.py), and the
    statistics only gain names as a flow goes on: checked once, at its end."""
    METRICS.update(stats, world.call_metrics.setup.copy())
    text = generate_latest(REGISTRY_METRICS)
    # ASCII is valid UTF-8 whatever prometheus-client escaped; parsing it costs more than
    # the rest of a flow, so only text that is not ASCII (a bug already) is parsed.
    if not text.isascii():
        try:
            list(text_string_to_metric_families(text.decode("utf-8")))
        except ValueError as exc:
            raise FlowFailure(f"/metrics: {exc}") from None
        raise FlowFailure(f"/metrics is not ASCII: {text[:300]!r}")
    if b"\nswitchboard_dialogs{" not in text:
        raise FlowFailure("/metrics without the dialog gauge")


def check_logs(values: list[str]) -> None:
    if not values:
        return
    text = " ".join(values)
    record = logging.LogRecord("switchboard.fuzz", logging.WARNING, __file__, 1,
                               "refused %s from %s", (values[0], text), None)
    record.call_id = values[-1]
    record.user = values[0]
    record.method = values[-1]
    record.source = "udp:127.0.0.1:5061"
    try:
        raise ParseError(f"bad header {text}")
    except ParseError:
        record.exc_info = sys.exc_info()
    for formatter in LOG_FORMATS:
        record.exc_text = None
        line = formatter.format(record)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FlowFailure(f"{type(formatter).__name__}: not UTF-8: {exc}") from None
        if isinstance(formatter, JsonFormatter):
            if "\n" in line:
                raise FlowFailure("a JSON log record spans lines")
            try:
                out = json.loads(line)
            except ValueError as exc:
                raise FlowFailure(f"JSON log line: {exc}: {line[:300]!r}") from None
            if set(out) < {"message", "call_id", "user", "method", "source", "exc"}:
                raise FlowFailure(f"JSON log line without its context: {sorted(out)}")


def note_wire_values(world: World, data: bytes) -> None:
    """The header values of the fuzzed message, for the log read-out."""
    try:
        msg = parse_message(data, check_body=False)
    except ParseError:
        return
    values = [v for k, _, v in msg.headers if k in (
        "from", "to", "call-id", "contact", "via", "cseq", "refer-to", "event")]
    values.append(msg.start_line())
    world.wire_values = values[:12]


# -- flows ---------------------------------------------------------------------------------------

Build = Callable[[World], bytes | None]


class Step:
    """A message a UA sends (`build` returns its bytes, None when the UA has nothing to send
    it about), or, without a sender, a call operation."""

    def __init__(self, sender: str | None, build: Callable[[World], Any]) -> None:
        self.sender = sender
        self.build = build


def invite(caller: str, callee: str, call_id: str, body: bytes) -> Step:
    def build(world: World) -> bytes:
        a, b = world.ua(caller), world.ua(callee)
        data = request_bytes("INVITE", b.contact, a, world.branch(a),
                             from_=f"<{a.aor}>;tag={a.tag}", to=f"<{b.aor}>",
                             call_id=call_id, cseq=a.next_cseq(call_id), body=body)
        return data
    return Step(caller, build)


def respond(name: str, method: str, status: int, reason: str, call_id: str,
            body: bytes = b"", initial: bool = False) -> Step:
    def build(world: World) -> bytes | None:
        ua = world.ua(name)
        req = ua.last_request(method, call_id, initial)
        if req is None:
            return None
        try:
            return response_bytes(req, ua, status, reason, body)
        except ParseError:
            return None
    return Step(name, build)


def ack(name: str, call_id: str) -> Step:
    """The ACK for the 2xx to our last INVITE in the call (RFC 3261 §13.2.2.4)."""
    def build(world: World) -> bytes | None:
        ua = world.ua(name)
        ok = ua.answer_to("INVITE", call_id)
        if ok is None:
            return None
        try:
            target = str(ok.contacts[0].uri)
            routes = list(reversed(ok.values("record-route")))
            number = ok.cseq.number
        except (ParseError, IndexError):
            return None
        return request_bytes("ACK", target, ua, world.branch(ua), from_=ok.get("from") or "",
                             to=ok.get("to") or "", call_id=call_id, cseq=number,
                             routes=routes, contact=False)
    return Step(name, build)


def in_dialog(name: str, call_id: str, method: str, body: bytes = b"",
              extra: Iterable[str] = (), content_type: str = "application/sdp") -> Step:
    """A request inside the dialog as `name` sees it: as the caller from the 2xx it got, as
    the callee from the INVITE it got."""
    def build(world: World) -> bytes | None:
        ua = world.ua(name)
        try:
            ok = ua.answer_to("INVITE", call_id)
            if ok is not None and call_id in ua.sent:
                from_, to = ok.get("from") or "", ok.get("to") or ""
                target = str(ok.contacts[0].uri)
                routes = list(reversed(ok.values("record-route")))
            else:
                inv = ua.last_request("INVITE", call_id, initial=True)
                if inv is None:
                    return None
                from_ = (inv.get("to") or "") + f";tag={ua.tag}"
                to = inv.get("from") or ""
                target = str(inv.contacts[0].uri)
                routes = inv.values("record-route")
        except (ParseError, IndexError):
            return None
        contact = method in ("INVITE", "UPDATE", "NOTIFY", "REFER", "SUBSCRIBE")
        return request_bytes(method, target, ua, world.branch(ua), from_=from_, to=to,
                             call_id=call_id, cseq=ua.next_cseq(call_id), routes=routes,
                             contact=contact, extra=extra, body=body, content_type=content_type)
    return Step(name, build)


def cancel(name: str, call_id: str) -> Step:
    """CANCEL of the INVITE we sent (RFC 3261 §9.1: its Request-URI, top Via, From, To,
    Call-ID and CSeq number)."""
    def build(world: World) -> bytes | None:
        inv = world.ua(name).sent.get(call_id)
        if inv is None:
            return None
        return _hop_by_hop("CANCEL", inv, inv.get("to") or "")
    return Step(name, build)


def ack_failure(name: str, call_id: str) -> Step:
    """The ACK for a final answer that is not 2xx (RFC 3261 §17.1.1.3)."""
    def build(world: World) -> bytes | None:
        ua = world.ua(name)
        inv = ua.sent.get(call_id)
        if inv is None:
            return None
        for msg in reversed(ua.inbox):
            if isinstance(msg, Response) and msg.status >= 300:
                try:
                    if msg.call_id == call_id and msg.cseq.method == "INVITE":
                        return _hop_by_hop("ACK", inv, msg.get("to") or "")
                except ParseError:
                    continue
        return None
    return Step(name, build)


def _hop_by_hop(method: str, inv: Request, to: str) -> bytes | None:
    try:
        number = inv.cseq.number
    except ParseError:
        return None
    lines = [f"{method} {inv.uri} SIP/2.0", f"Via: {inv.get('via')}"]
    lines += [f"Route: {r}" for r in inv.get_all("route")]
    lines += ["Max-Forwards: 70", f"From: {inv.get('from')}", f"To: {to}",
              f"Call-ID: {inv.get('call-id')}", f"CSeq: {number} {method}", "Content-Length: 0"]
    return wire("\r\n".join(lines) + "\r\n\r\n")


def notify(name: str, call_id: str, frag: bytes, state: str) -> Step:
    return in_dialog(name, call_id, "NOTIFY", frag, ("Event: refer", f"Subscription-State: {state}"),
                     "message/sipfrag;version=2.0")


def invite_refer_to(name: str, new_call_id: str) -> Step:
    """The transferee's new INVITE to the Refer-To it got (Replaces from its headers)."""
    def build(world: World) -> bytes | None:
        ua = world.ua(name)
        refer = ua.last_request("REFER")
        if refer is None:
            return None
        try:
            uri = refer.addresses("refer-to")[0].uri
        except (ParseError, IndexError):
            return None
        if not isinstance(uri, SipUri):
            return None
        extra = []
        target = uri.copy()
        if target.headers:
            for item in target.headers.split("&"):
                key, _, value = item.partition("=")
                if key.lower() == "replaces":
                    extra.append("Replaces: " + urllib.parse.unquote(
                        value, errors="surrogateescape"))
            target.headers = None
        return request_bytes("INVITE", str(target), ua, world.branch(ua),
                             from_=f"<{ua.aor}>;tag={ua.new_tag}", to=f"<{target}>",
                             call_id=new_call_id, cseq=ua.next_cseq(new_call_id), extra=extra,
                             body=sdp(ua.name, 1, 4100))
    return Step(name, build)


def plain(name: str, method: str, ruri: str, call_id: str, extra: Iterable[str] = (),
          body: bytes = b"", to: str | None = None, content_type: str = "text/plain") -> Step:
    def build(world: World) -> bytes:
        ua = world.ua(name)
        return request_bytes(method, ruri, ua, world.branch(ua),
                             from_=f"<{to or ua.aor}>;tag={ua.tag}", to=f"<{to or ruri}>",
                             call_id=call_id, cseq=ua.next_cseq(call_id), extra=extra,
                             body=body, content_type=content_type)
    return Step(name, build)


def op(action: Callable[[World], None]) -> Step:
    def build(world: World) -> None:
        with contextlib.suppress(Refused):
            action(world)
        world.collect()
    return Step(None, build)


X, Y, Z = "call-1@alice", "call-2@alice", "call-3@bob"
A, B, C = "alice", "bob", "carol"
SDP_A, SDP_B, SDP_C = sdp(A, 10, 4000), sdp(B, 20, 5000), sdp(C, 30, 6000)
FRAG_100 = b"SIP/2.0 100 Trying\r\n"
FRAG_200 = b"SIP/2.0 200 OK\r\n"
CAROL = "sip:carol@127.0.0.1:5063"


def established(caller: str = A, callee: str = B, call_id: str = X,
                caller_sdp: bytes = SDP_A, callee_sdp: bytes = SDP_B) -> list[Step]:
    return [invite(caller, callee, call_id, caller_sdp),
            respond(callee, "INVITE", 180, "Ringing", call_id, initial=True),
            respond(callee, "INVITE", 200, "OK", call_id, callee_sdp, initial=True),
            ack(caller, call_id)]


FLOWS: list[list[Step]] = [
    # A call: re-INVITE, INFO, BYE.
    [*established(),
     in_dialog(A, X, "INVITE", sdp(A, 11, 4000)),
     respond(B, "INVITE", 200, "OK", X, sdp(B, 21, 5000)),
     ack(A, X),
     in_dialog(B, X, "INFO", b"Signal=1\r\n", content_type="application/dtmf-relay"),
     respond(A, "INFO", 200, "OK", X),
     in_dialog(A, X, "BYE"),
     respond(B, "BYE", 200, "OK", X)],
    # A blind transfer of the caller to Carol, answered.
    [*established(),
     op(lambda w: w.proxy.callops.transfer(X, "caller", CAROL, w.now)),
     respond(A, "REFER", 202, "Accepted", X),
     notify(A, X, FRAG_100, "active;expires=60"),
     invite_refer_to(A, Y),
     respond(C, "INVITE", 180, "Ringing", Y, initial=True),
     respond(C, "INVITE", 200, "OK", Y, SDP_C, initial=True),
     ack(A, Y),
     notify(A, X, FRAG_200, "terminated;reason=noresource"),
     respond(A, "BYE", 200, "OK", X),
     respond(B, "BYE", 200, "OK", X),
     in_dialog(A, Y, "BYE"),
     respond(C, "BYE", 200, "OK", Y)],
    # A transfer refused, then a hold of the caller and a BYE from the callee.
    [*established(),
     op(lambda w: w.proxy.callops.transfer(X, "callee", CAROL, w.now)),
     respond(B, "REFER", 603, "Decline", X),
     op(lambda w: w.proxy.callops.hold(X, "caller", None, w.now)),
     respond(A, "INVITE", 200, "OK", X, sdp(A, 11, 4000, "recvonly")),
     respond(B, "INVITE", 200, "OK", X, sdp(B, 21, 5000, "sendonly")),
     in_dialog(B, X, "BYE"),
     respond(A, "BYE", 200, "OK", X)],
    # Hold and unhold of both legs.
    [*established(),
     op(lambda w: w.proxy.callops.hold(X, "both", None, w.now)),
     respond(A, "INVITE", 200, "OK", X, sdp(A, 11, 4000, "recvonly")),
     respond(B, "INVITE", 200, "OK", X, sdp(B, 21, 5000, "recvonly")),
     op(lambda w: w.proxy.callops.unhold(X, "both", None, w.now)),
     respond(A, "INVITE", 200, "OK", X, sdp(A, 12, 4000)),
     respond(B, "INVITE", 200, "OK", X, sdp(B, 22, 5000)),
     in_dialog(A, X, "BYE"),
     respond(B, "BYE", 200, "OK", X)],
    # An attended transfer: X (A-B), Z (B-C); A is referred to C, replacing Z.
    [*established(),
     *established(B, C, Z, sdp(B, 40, 5002), SDP_C),
     op(lambda w: w.proxy.callops.attended_transfer(X, "caller", Z, "callee", None, None, None,
                                                     w.now)),
     respond(A, "REFER", 202, "Accepted", X),
     notify(A, X, FRAG_100, "active;expires=60"),
     invite_refer_to(A, Y),
     respond(C, "INVITE", 200, "OK", Y, SDP_C, initial=True),
     ack(A, Y),
     notify(A, X, FRAG_200, "terminated;reason=noresource"),
     in_dialog(C, Z, "BYE"),
     respond(B, "BYE", 200, "OK", Z),
     respond(A, "BYE", 200, "OK", X),
     respond(B, "BYE", 200, "OK", X)],
    # An early dialog: 183 with SDP, CANCEL, 487; then a call refused busy.
    [invite(A, B, X, SDP_A),
     respond(B, "INVITE", 183, "Session Progress", X, SDP_B, initial=True),
     cancel(A, X),
     respond(B, "CANCEL", 200, "OK", X),
     respond(B, "INVITE", 487, "Request Terminated", X, initial=True),
     ack_failure(A, X),
     invite(A, B, Y, SDP_A),
     respond(B, "INVITE", 486, "Busy Here", Y, initial=True),
     ack_failure(A, Y),
     op(lambda w: w.proxy.end_dialog(X, w.now))],
    # Out of any dialog: REGISTER, OPTIONS to the proxy, MESSAGE to a registered user.
    [plain(A, "REGISTER", "sip:127.0.0.1", "reg-1@alice", ["Expires: 600"],
           to="sip:alice@127.0.0.1"),
     plain(B, "OPTIONS", "sip:127.0.0.1:5060", "opt-1@bob"),
     plain(B, "MESSAGE", "sip:alice@127.0.0.1", "msg-1@bob", body=b"hello"),
     respond(A, "MESSAGE", 200, "OK", "msg-1@bob")],
]


def message_steps(flow: list[Step]) -> list[int]:
    return [i for i, step in enumerate(flow) if step.sender is not None]


def run_flow(flow_index: int, at: int, data: bytes | None, *, inject: bool = False,
             tcp: bool = False, record: list[bytes] | None = None) -> World:
    """Run a flow, with `data` sent at its message step `at` (instead of the honest message,
    or just before it when `inject`); `record` collects the honest messages."""
    flow = FLOWS[flow_index]
    world = World()
    for index, step in enumerate(flow):
        world.now += STEP
        if step.sender is None:
            step.build(world)
            continue
        sender = world.ua(step.sender)
        honest = step.build(world)
        if record is not None:
            record.append(honest or b"")
        if data is not None and index == at:
            note_wire_values(world, data)
            world.send(data, sender, tcp)
            check_state(world)
            if not inject:
                continue
        if honest is not None:
            world.send(honest, sender)
    check_state(world)
    world.settle()
    check_state(world, metrics=True)
    return world


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    CURRENT[0] = data
    flow_index = data[0] % len(FLOWS)
    steps = message_steps(FLOWS[flow_index])
    at = steps[(data[1] & 0x1F) % len(steps)]
    run_flow(flow_index, at, data[2:], inject=bool(data[1] & 0x20), tcp=bool(data[1] & 0x40))


# -- seeds ---------------------------------------------------------------------------------------


def seeds() -> list[bytes]:
    """The honest message of every step of every flow, and each recorded INVITE of
    tests/data/readout at the first step of every flow."""
    out = []
    for flow_index in range(len(FLOWS)):
        honest: list[bytes] = []
        run_flow(flow_index, -1, None, record=honest)
        for position, data in enumerate(honest):
            if data:
                out.append(bytes([flow_index, position]) + data)
        for path in sorted(DATA.glob("invite-*.sip")):
            out.append(bytes([flow_index, 0]) + path.read_bytes())
    return out


def write_seeds() -> str:
    directory = tempfile.mkdtemp(prefix="switchboard-fuzz-flows-seeds-")
    for number, data in enumerate(seeds()):
        Path(directory, f"seed-{number:03d}").write_bytes(data)
    return directory


def main(argv: list[str]) -> None:
    flags, dirs = libfuzzer_arguments(argv, "fuzz_flows")
    if not any(f.startswith("-dict=") for f in flags):
        flags.append(f"-dict={DICTIONARY}")
    prefix = next((f.split("=", 1)[1] for f in flags if f.startswith("-artifact_prefix=")), "")
    FINDINGS["dir"] = Path(prefix if prefix.endswith("/") else os.path.dirname(prefix) or ".")
    # A single file is a crash to replay: no seeds then.
    extra = [] if len(dirs) == 1 and Path(dirs[0]).is_file() else [write_seeds()]
    atheris.Setup([argv[0], *flags, *dirs, *extra], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
