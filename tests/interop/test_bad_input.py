"""Malformed input at a running switchboard while SIPp calls go through it.

While SIPp places 200 healthy calls (UAC -> switchboard -> UAS, scenarios/uac.xml and
uas.xml), a sender blasts 20,000 mutated, truncated and garbage datagrams at the UDP port and
300 broken TCP streams at the TCP port. Afterwards: every call completed, the process is
alive and answers OPTIONS, its memory grew by less than 30 MB, and requests that can be
answered got the right status (400, 505) with the malformed parts named in the corpus.

Everything stays on 127.0.0.1. The mutations start from the recorded corpus (tests/data) with
every address rewritten to 127.0.0.1 and a sink port of ours, and a mutated datagram is sent
only if whatever switchboard could send because of it (a forwarded request, an answer) would
still go to 127.0.0.1 at our sink or back to the sender: no IP literal but 127.0.0.1, every
one of them with the sink port, no `[` (IPv6) and no `maddr`, and a Via that routes the
answer to the sink or carries `rport`. Hostnames are never resolved by switchboard.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switchboard.sip import ParseError, Request, parse_message
from tests.support.ports import HOST, free_port
from tests.support.server import SwitchboardServer
from tests.support.sipp import StartSipp, assert_clean, wait_caller_first
from tests.support.udp import DatagramReader

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


DATA = Path(__file__).resolve().parents[1] / "data"
CALLS = 200
DATAGRAMS = 20_000
TCP_STREAMS = 300
RSS_GROWTH_LIMIT_KB = 30 * 1024
SEED = 20240610

_IPV4 = re.compile(rb"(?<![0-9.])\d{1,3}(?:\.\d{1,3}){3}(?![0-9])")
_IPV6_REF = re.compile(rb"\[[0-9A-Fa-f:.]*\]")
_LOOPBACK_PORT = re.compile(rb"127\.0\.0\.1(?::\d+)?")
_CONTENT_LENGTH = re.compile(rb"^((?:content-length|l)[ \t]*:[ \t]*)\d+", re.I | re.M)


# ----------------------------------------------------------------------------- the corpus


def sanitized_corpus(sink: int) -> list[bytes]:
    """Every recorded message with its addresses turned into 127.0.0.1:sink and its
    Content-Length fixed to the (possibly changed) body."""
    out = []
    for path in sorted(DATA.glob("*.sip")) + sorted((DATA / "malformed").glob("*.sip")):
        data = path.read_bytes()
        if len(data) > 60_000:
            continue  # oversize.sip: more than a UDP datagram holds
        data = _IPV6_REF.sub(b"127.0.0.1", data)
        data = _IPV4.sub(b"127.0.0.1", data)
        data = _LOOPBACK_PORT.sub(b"127.0.0.1:%d" % sink, data)
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = str(len(body)).encode()
            head = _CONTENT_LENGTH.sub(lambda m, n=length: m.group(1) + n, head)
            data = head + sep + body
        out.append(data)
    return out


def stays_local(data: bytes, sink: int) -> bool:
    """Whether anything switchboard might send because of `data` goes to 127.0.0.1 at the
    sink port (or back to the sender: a Via with rport)."""
    if b"[" in data or b"maddr" in data.lower():
        return False
    port = b":%d" % sink
    for m in _IPV4.finditer(data):
        if m.group() != b"127.0.0.1":
            return False
        end = m.end()
        if data[end : end + len(port)] != port or data[end + len(port) : end + len(port) + 1].isdigit():
            return False
    try:
        msg = parse_message(data, check_body=False)
        via = msg.top_via
    except ParseError:
        return True  # nothing to address an answer with
    if not isinstance(msg, Request):
        return True  # a response is relayed only on a Via of switchboard's own
    return "rport" in via.params or via.port == sink


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    """One damaged message: byte flips, truncation, header duplication, huge headers, too
    many headers, stray CR/LF/NUL, two messages spliced, or plain garbage."""
    data = bytearray(rng.choice(corpus))
    kind = rng.randrange(9)
    if kind == 0:  # byte flips
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    elif kind == 1:  # truncation
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 2:  # a header line repeated
        lines = bytes(data).split(b"\r\n")
        if len(lines) > 2:
            i = rng.randrange(1, len(lines) - 1)
            lines[i:i] = [lines[i]] * rng.randint(1, 120)
        data = bytearray(b"\r\n".join(lines))
    elif kind == 3:  # one huge header
        huge = b"X-Huge: " + bytes(rng.choice(b"abcXYZ;,<>\"") for _ in range(rng.randint(1000, 60000)))
        at = bytes(data).find(b"\r\n")
        data[at + 2 : at + 2] = huge + b"\r\n"
    elif kind == 4:  # too many headers
        at = bytes(data).find(b"\r\n")
        data[at + 2 : at + 2] = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(rng.randint(200, 400)))
    elif kind == 5:  # stray separators and NULs
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.choice([b"\r", b"\n", b"\x00", b":", b" ", b"\r\n\r\n", b",", b";"])
    elif kind == 6:  # two messages spliced
        other = rng.choice(corpus)
        data = bytearray(bytes(data)[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :])
    elif kind == 7:  # garbage
        data = bytearray(rng.randbytes(rng.randint(1, 1500)))
    else:  # a start line or a Content-Length turned bad
        text = bytes(data)
        text = rng.choice([
            lambda t: t.replace(b"SIP/2.0", b"SIP/3.0", 1),
            lambda t: _CONTENT_LENGTH.sub(lambda m: m.group(1) + b"99999", t, count=1),
            lambda t: _CONTENT_LENGTH.sub(lambda m: m.group(1) + b"-1", t, count=1),
            lambda t: re.sub(rb"CSeq: \d+", b"CSeq: 1x", t, count=1),
            lambda t: t.replace(b"\r\n", b"\n"),
        ])(text)
        data = bytearray(text)
    return bytes(data[:65000])


# ----------------------------------------------------------------------------- helpers


class Sink(DatagramReader):
    """A UDP socket on 127.0.0.1 that reads and drops whatever switchboard sends it."""

    def __init__(self) -> None:
        self.received = 0
        super().__init__(HOST, "bad-input-sink")

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        self.received += 1


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def rss_kb(pid: int) -> int:
    """VmRSS of `pid` and its child processes, in kB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(m.group(1)) if m else 0
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in (task / "children").read_text().split()]
    return total


@dataclass
class Blast:
    datagrams: int = 0
    skipped: int = 0  # mutations that might have sent traffic away from our sink
    kinds: dict[str, int] = field(default_factory=dict)
    tcp_streams: int = 0
    tcp_closed_by_server: int = 0
    errors: list[str] = field(default_factory=list)


def blast_udp(server: SwitchboardServer, corpus: list[bytes], sink: int, out: Blast,
              deadline: float) -> None:
    rng = random.Random(SEED)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.setblocking(False)
        attempts = 0
        while out.datagrams < DATAGRAMS and attempts < DATAGRAMS * 3:
            if time.monotonic() > deadline:
                out.errors.append(f"udp blast stopped by its deadline after {out.datagrams}")
                return
            attempts += 1
            data = mutate(rng, corpus)
            if not stays_local(data, sink):
                out.skipped += 1
                continue
            with contextlib.suppress(BlockingIOError):
                sock.sendto(data, server.udp_address)
            out.datagrams += 1
            # Drain what comes back to the sender (answers to rport Vias) and pace the
            # blast: ~4,000 datagrams/s, a rate one switchboard process keeps up with.
            if out.datagrams % 100 == 0:
                with contextlib.suppress(BlockingIOError):
                    for _ in range(1000):
                        sock.recv(65535)
                time.sleep(0.025)


def blast_tcp(server: SwitchboardServer, corpus: list[bytes], out: Blast, deadline: float) -> None:
    rng = random.Random(SEED + 1)
    for i in range(TCP_STREAMS):
        if time.monotonic() > deadline:
            out.errors.append(f"tcp blast stopped by its deadline after {i} streams")
            return
        kind = i % 6
        message = rng.choice(corpus)
        try:
            with socket.create_connection(server.tcp_address, timeout=2) as conn:
                conn.settimeout(0.5)
                if kind == 0:  # opened and dropped
                    pass
                elif kind == 1:  # a partial message, then gone
                    conn.sendall(message[: rng.randrange(1, len(message))])
                elif kind == 2:  # a Content-Length that lies upward: the server waits
                    conn.sendall(_CONTENT_LENGTH.sub(lambda m: m.group(1) + b"60000", message, count=1))
                elif kind == 3:  # a bad Content-Length: the server closes the connection
                    conn.sendall(_CONTENT_LENGTH.sub(lambda m: m.group(1) + b"12a", message, count=1))
                    out.tcp_closed_by_server += _closed(conn)
                elif kind == 4:  # garbage with a header end in it: no Content-Length
                    conn.sendall(rng.randbytes(rng.randint(1, 3000)) + b"\r\n\r\n")
                    out.tcp_closed_by_server += _closed(conn)
                else:  # mutated messages, pipelined, sent in small pieces
                    data = b"".join(mutate(rng, corpus) for _ in range(3))
                    for j in range(0, min(len(data), 20000), 512):
                        conn.sendall(data[j : j + 512])
                out.tcp_streams += 1
        except OSError as exc:
            # A stream the server closed while we were still writing counts as sent.
            out.tcp_streams += 1
            if not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                out.errors.append(f"tcp stream {i}: {exc!r}")


def _closed(conn: socket.socket) -> int:
    """1 if the server closes the connection within 2 s (reading and dropping any answer)."""
    end = time.monotonic() + 2
    while time.monotonic() < end:
        try:
            if conn.recv(65535) == b"":
                return 1
        except TimeoutError:
            continue
        except OSError:
            return 1
    return 0


def ask(sock: socket.socket, server: SwitchboardServer, request: bytes, call_id: str,
        timeout: float = 5.0) -> str | None:
    """Send one UDP request; the status line of its final answer (matched by Call-ID)."""
    sock.sendto(request, server.udp_address)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        if f"Call-ID: {call_id}".encode() in data and not data.startswith(b"SIP/2.0 1"):
            return data.split(b"\r\n", 1)[0].decode(errors="replace")
    return None


def request(port: int, call_id: str, *, start: str | None = None, cseq: str = "1 OPTIONS",
            extra: str = "", server: SwitchboardServer) -> bytes:
    start = start or f"OPTIONS sip:{HOST}:{server.udp_port} SIP/2.0"
    return (
        f"{start}\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-{call_id};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:probe@{HOST}:{port}>;tag=probe\r\n"
        f"To: <sip:{HOST}:{server.udp_port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


# ----------------------------------------------------------------------------- the test


# The blast is paced by the sender (a Python thread): on a loaded 2-core machine generating
# the mutations alone can take a minute, so its deadline and the test's timeout leave room.
@pytest.mark.timeout(300)
def test_calls_survive_malformed_input(
    sipp: StartSipp, switchboard: SwitchboardServer, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    server = switchboard
    corpus = sanitized_corpus(sink.port)
    assert len(corpus) > 60
    time.sleep(0.5)
    rss_before = rss_kb(server.proc.pid)

    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port, calls=CALLS, trace_msg=False).wait_listening()
    uac = sipp(
        "uac",
        "uac.xml",
        remote=f"{server.host}:{server.udp_port}",
        local_port=free_port("udp"),
        calls=CALLS,
        rate=20,
        keys={"uas_port": uas_port},
        trace_msg=False,
    )
    blast = Blast()
    deadline = time.monotonic() + 150
    senders = [
        threading.Thread(target=blast_udp, args=(server, corpus, sink.port, blast, deadline)),
        threading.Thread(target=blast_tcp, args=(server, corpus, blast, deadline)),
    ]
    started = time.monotonic()
    for t in senders:
        t.start()
    for t in senders:
        t.join(170)
    blast_seconds = time.monotonic() - started
    uac_result, uas_result = wait_caller_first(uac, uas, grace=10.0)

    assert server.proc.poll() is None, "switchboard died\n" + server.describe()
    assert_clean(uac_result, uas_result, calls=CALLS)
    assert blast.datagrams == DATAGRAMS and blast.tcp_streams == TCP_STREAMS, blast
    assert not blast.errors, blast.errors

    # Still answering, with the right status for what can be answered.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
        cases = {
            "healthy OPTIONS": (request(port, "probe-ok", server=server), "SIP/2.0 200"),
            "bad CSeq": (request(port, "probe-cseq", cseq="abc OPTIONS", server=server), "SIP/2.0 400"),
            "CSeq method differs": (request(port, "probe-method", cseq="1 INVITE", server=server), "SIP/2.0 400"),
            "bad Max-Forwards": (
                request(port, "probe-mf", server=server).replace(b"Max-Forwards: 70", b"Max-Forwards: many"),
                "SIP/2.0 400",
            ),
            "unterminated From": (
                request(port, "probe-from", server=server).replace(b"From: <sip:", b"From: \"x <sip:"),
                "SIP/2.0 400",
            ),
            "Content-Length past the datagram": (
                request(port, "probe-length", server=server).replace(b"Content-Length: 0", b"Content-Length: 10"),
                "SIP/2.0 400",
            ),
        }
        answers = {
            name: ask(probe, server, data, re.search(rb"Call-ID: (\S+)", data).group(1).decode())  # type: ignore[union-attr]
            for name, (data, _) in cases.items()
        }
    wrong = {
        name: (answers[name], want)
        for name, (_, want) in cases.items()
        if answers[name] is None or not answers[name].startswith(want)  # type: ignore[union-attr]
    }
    assert not wrong, wrong

    # Memory: flat once the transactions the blast created have timed out (Timer B/F/H,
    # 32 s at most; the dialogs of the few mutated INVITEs that look valid end with them).
    rss_after = rss_kb(server.proc.pid)
    for _ in range(40):
        if rss_after - rss_before <= RSS_GROWTH_LIMIT_KB:
            break
        time.sleep(1)
        rss_after = rss_kb(server.proc.pid)
    stats = server.mi_result("get_statistics", statistics=["all"])
    with capsys.disabled():
        print(
            f"\nbad input: {blast.datagrams} datagrams ({blast.skipped} mutations not sent: "
            f"could have left the sink), {blast.tcp_streams} TCP streams "
            f"({blast.tcp_closed_by_server} closed by the server) in {blast_seconds:.1f} s; "
            f"{CALLS} calls ok; sink got {sink.received}; RSS {rss_before} -> {rss_after} kB; "
            f"stats: { {k: v for k, v in stats.items() if 'bad' in k or 'err' in k or 'drop' in k} }"
        )
    assert rss_after - rss_before <= RSS_GROWTH_LIMIT_KB, (rss_before, rss_after)


def test_request_with_another_sip_version_is_answered_505(switchboard: SwitchboardServer) -> None:
    """`OPTIONS ... SIP/3.0` must get `505 Version Not Supported` (RFC 3261 §21.5.6).

    Fails today: `Proxy._answer_unparsable` (switchboard/sip/proxy.py) parses the datagram
    again with `parse_message(data, check_body=False)` to address the answer, and that parse
    raises the same version error, so nothing is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
        data = request(
            port, "probe-version", start=f"OPTIONS sip:{HOST}:{switchboard.udp_port} SIP/3.0",
            server=switchboard,
        )
        answer = ask(probe, switchboard, data, "probe-version", timeout=3.0)
    assert answer is not None and answer.startswith("SIP/2.0 505"), answer
