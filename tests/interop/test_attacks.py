"""A running switchboard attacked with the attackers' own tools: SIPVicious (`svwar`,
`svcrack`), `sipsak` and SIPp, from untrusted loopback addresses.

Every test starts `switchboard serve` with digest users alice and bob, every method from an
untrusted source challenged, failed digests counted and punished, and only 127.0.0.1
trusted. alice's phone (a fake UA of ours) is registered from 127.0.0.1; bob exists but is
offline. A "catcher" on 127.0.0.99 stands for a host outside our network (a premium-rate
number's carrier): nothing an attacker sends may reach it, nor alice's phone — not even
from a UA outside that was legitimately called and so holds a real dialog and the proxy's
signed Record-Route. While each attack runs, 200 calls between two SIPp instances on
127.0.0.1 go through the proxy, and all of them must complete: the defences must not touch
legitimate traffic.

SIPVicious binds every address whatever its `-b` says; the shim in attackers/shim
(sitecustomize) makes it send from 127.0.0.66 and records what it sends and receives.
sipsak binds its `-k` address itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.interop.attackers.targets import (
    Caller,
    Catcher,
    Phone,
    SipMessage,
    auth_params,
    build_request,
    digest_authorization,
    probe,
)
from tests.support.ports import HOST, free_port
from tests.support.server import SwitchboardServer
from tests.support.sipp import SippResult, StartSipp, assert_clean, wait_caller_first

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


ATTACKERS = Path(__file__).parent / "attackers"
SHIM = ATTACKERS / "shim"
PASSWORDS = ATTACKERS / "passwords.txt"
# The real password is the last one svcrack would try.
ALICE_PASSWORD = PASSWORDS.read_text().split()[-1]
BOB_PASSWORD = "bob-offline-Jx8q"
ATTACKER = "127.0.0.66"
MAX_FAILURES = 5
USER_MAX_FAILURES = 20
LEGIT_CALLS = 200
LEGIT_RATE = 25  # calls/s: the 200 calls run for 8 s, across each attack


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:  # never a silent skip: scripts/test installs it
        pytest.fail(f"{name} not installed (apt-get install {package}, or run scripts/test)",
                    pytrace=False)
    return path


# ----------------------------------------------------------------------------- the stage


@dataclass
class Stage:
    """A switchboard with alice registered, the catcher, and the log directory."""

    server: SwitchboardServer
    phone: Phone
    catcher: Catcher
    tmp_path: Path
    sipp: StartSipp
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def proxy(self) -> tuple[str, int]:
        return self.server.udp_address

    @property
    def proxy_uri(self) -> str:
        return f"sip:{HOST}:{self.server.udp_port}"

    def security_events(self, source: str | None = None) -> list[dict[str, Any]]:
        """The JSON log objects of failed authentications and bans, oldest first."""
        found = []
        for line in self.server.output.splitlines():
            line = line.removeprefix("[stdout] ").strip()
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if (isinstance(record, dict)
                    and record.get("event") in ("auth_failed", "source_banned")
                    and (source is None or record.get("source") == source)):
                found.append(record)
        return found

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.server.mi_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def assert_nothing_got_through(self, *, phone_expected: int = 0) -> None:
        time.sleep(0.5)  # a relayed request would be on its way by now
        assert not self.catcher.received, (
            "a request from an untrusted source was relayed to the outside host:\n"
            + self.catcher.describe())
        got = self.phone.requests()
        assert len(got) == phone_expected, (
            f"alice's phone got {len(got)} requests, expected {phone_expected}:\n"
            + self.phone.describe())


def _config_text(**auth: Any) -> str:
    settings: dict[str, Any] = {
        "users": f'{{alice = "{ALICE_PASSWORD}", bob = "{BOB_PASSWORD}"}}',
        "methods": '["*"]',
        "algorithms": '["SHA-256", "MD5"]',
        "max_failures": MAX_FAILURES,
        "user_max_failures": USER_MAX_FAILURES,
        "failure_window": 600,
        "ban_time": 900,
    }
    settings.update(auth)
    lines = ["[auth]", *(f"{key} = {value}" for key, value in settings.items()),
             "[proxy]", 'trusted = ["127.0.0.1/32"]', 'route_secret = ""']
    return "\n".join(lines) + "\n"


@pytest.fixture
def stage(switchboard_server: Callable[..., SwitchboardServer], sipp: StartSipp,
          tmp_path: Path) -> Iterator[Callable[..., Stage]]:
    """`stage(**auth_settings)`: serve with the attack configuration (JSON logs), register
    alice's phone from 127.0.0.1 and open the catcher."""
    made: list[Stage] = []

    def start(**auth: Any) -> Stage:
        config = tmp_path / "attacks.toml"
        config.write_text(_config_text(**auth))
        server = switchboard_server("--config", str(config), "--log-format", "json")
        catcher = Catcher()
        phone = Phone("alice", ALICE_PASSWORD, server.udp_address)
        made_stage = Stage(server, phone, catcher, tmp_path, sipp,
                           closers=[catcher.close, phone.close])
        made.append(made_stage)
        phone.register()
        return made_stage

    yield start
    for made_stage in made:
        print(made_stage.phone.describe())
        print(made_stage.catcher.describe())
        for close in made_stage.closers:
            close()


@contextlib.contextmanager
def legitimate_calls(stage: Stage, calls: int = LEGIT_CALLS,
                     rate: float = LEGIT_RATE) -> Iterator[None]:
    """SIPp caller → switchboard → SIPp callee, both on trusted 127.0.0.1, across the block;
    every call must complete cleanly."""
    uas_port = free_port()
    uas = stage.sipp("legit-uas", "uas.xml", local_port=uas_port, calls=calls,
                     trace_msg=False).wait_listening()
    uac = stage.sipp("legit-uac", "uac.xml", remote=f"{HOST}:{stage.server.udp_port}",
                     local_port=free_port(), calls=calls, rate=rate,
                     keys={"uas_port": uas_port}, trace_msg=False)
    yield
    _check_calls(calls, *wait_caller_first(uac, uas))


def _check_calls(calls: int, *results: SippResult) -> None:
    assert_clean(*results, calls=calls,
                 why="legitimate calls from the trusted network were hurt by the attack or its defence")


# ----------------------------------------------------------------------------- SIPVicious


@dataclass
class ToolRun:
    """One finished run of an attack tool: exit code, output, and (for SIPVicious) what
    the shim recorded."""

    name: str
    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    capture: list[dict[str, Any]]

    def messages(self, op: str) -> list[SipMessage]:
        return [SipMessage.parse(e["data"].encode("latin-1"), tuple(e["peer"]))
                for e in self.capture if e["op"] == op]

    def describe(self) -> str:
        return (f"=== {self.name}: exit code {self.returncode}\ncommand: {' '.join(self.args)}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


class Sipvicious:
    """A SIPVicious tool (`svwar`, `svcrack`) started with the shim: it sends from
    `source`, and its traffic is recorded."""

    def __init__(self, tool: str, args: list[str], *, name: str, log_dir: Path,
                 source: str = ATTACKER) -> None:
        binary = _tool(tool, "sipvicious")
        self.name = name
        self.args = [binary, *args]
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.capture_path = log_dir / f"{name}.capture.jsonl"
        self.capture_path.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(PYTHONPATH=str(SHIM), SB_ATTACK_SOURCE=source,
                   SB_ATTACK_CAPTURE=str(self.capture_path))
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=env, cwd=log_dir)
        self.source = source

    def wait(self, timeout: float = 60.0) -> ToolRun:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        capture = []
        if self.capture_path.exists():
            capture = [json.loads(line) for line in self.capture_path.read_text().splitlines()]
        run = ToolRun(self.name, self.args, self.proc.returncode,
                      self.stdout_path.read_text(errors="replace"),
                      self.stderr_path.read_text(errors="replace"), capture)
        sends = [e for e in capture if e["op"] == "send"]
        assert sends, f"{self.name} sent nothing\n{run.describe()}"
        wrong = {tuple(e["local"]) for e in sends if e["local"][0] != self.source}
        assert not wrong, (f"the shim did not make {self.name} send from {self.source}: "
                           f"{wrong}\n{run.describe()}")
        return run


def _svwar_extension(msg: SipMessage) -> str:
    """svwar puts the extension in its From tag: hex("EXT\\x01RANDOM")."""
    match = re.search(r";\s*tag=([0-9a-fA-F]+)", msg.get("from"))
    if not match:
        return "?"
    try:
        return bytes.fromhex(match.group(1)).split(b"\x01")[0].decode()
    except ValueError:
        return "?"


def _answer_shape(msg: SipMessage) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """What must not tell users apart: the status line, the header names in order and the
    challenges with their nonces (and opaque values) blanked."""
    challenges = tuple(
        re.sub(r'(nonce|opaque)="[^"]*"', r'\1="…"', value)
        for name, value in msg.headers
        if name in ("www-authenticate", "proxy-authenticate"))
    return msg.first_line, tuple(msg.header_names), challenges


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS", "MESSAGE"])
def test_svwar_finds_no_user(stage: Callable[..., Stage], method: str) -> None:
    """svwar cannot tell alice (registered), bob (configured, offline) and carol (no such
    user) from the random user it probes first: every one gets the same challenge with the
    same headers, and none of its requests reaches alice's phone.

    svwar stops at the first extension that answers like its random probe, so each
    extension gets its own run (in parallel), each one comparing it with a fresh random
    user; `--force` keeps svwar scanning after the probe is challenged."""
    s = stage()
    extensions = ("alice", "bob", "carol")
    with legitimate_calls(s):
        tools = []
        for extension in extensions:
            dictionary = s.tmp_path / f"svwar-{method}-{extension}.txt"
            dictionary.write_text(extension + "\n")
            port = free_port()
            tools.append(Sipvicious("svwar", [
                "-m", method, "--force", "-d", str(dictionary), "-x", ATTACKER,
                "-P", str(port), "--domain", f"{HOST}:{s.server.udp_port}",
                "--maximumtime", "3", f"udp://{HOST}:{s.server.udp_port}",
            ], name=f"svwar-{method}-{extension}", log_dir=s.tmp_path))
        runs = [tool.wait() for tool in tools]

    report = "\n\n".join(run.describe() for run in runs)
    for run in runs:
        assert "| Extension" not in run.stdout, f"svwar found users:\n{report}"
        assert "found nothing" in run.stderr, f"svwar did not finish its scan:\n{report}"
        assert "Unhandled exception" not in run.stderr, report

    # Every extension was asked and answered (a silent proxy would fool svwar too), and all
    # the answers look alike.
    answers: dict[str, list[SipMessage]] = {}
    for run in runs:
        for msg in run.messages("recv"):
            if msg.is_response and msg.status >= 200 and msg.method == method:
                answers.setdefault(_svwar_extension(msg), []).append(msg)
    missing = [e for e in extensions if e not in answers]
    assert not missing, f"no answer to svwar's {method} for {missing}:\n{report}"
    shapes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for extension, msgs in answers.items():
        for msg in msgs:
            shapes.setdefault(_answer_shape(msg), []).append(extension)
    assert len(shapes) == 1, (
        f"{method} answers differ between users, so they can be enumerated:\n"
        + "\n".join(f"{sorted(set(users))}: {shape}" for shape, users in shapes.items()))
    ((status_line, _, _),) = shapes
    expected = 401 if method == "REGISTER" else 407
    assert status_line.startswith(f"SIP/2.0 {expected} "), (
        f"{method} from an untrusted source answered {status_line!r}, expected a {expected} "
        f"challenge")
    s.assert_nothing_got_through()


# ----------------------------------------------------------------------------- svcrack


def _svcrack(s: Stage, name: str, source: str = ATTACKER) -> Sipvicious:
    return Sipvicious("svcrack", [
        "-u", "alice", "-d", str(PASSWORDS), "-x", source, "-P", str(free_port()),
        "--domain", f"{HOST}:{s.server.udp_port}", "--maximumtime", "3",
        f"udp://{HOST}:{s.server.udp_port}",
    ], name=name, log_dir=s.tmp_path, source=source)


def _assert_not_cracked(run: ToolRun) -> None:
    assert ALICE_PASSWORD not in run.stdout + run.stderr, (
        f"svcrack found alice's password:\n{run.describe()}")
    assert "found nothing" in run.stderr, f"svcrack did not end its attack:\n{run.describe()}"
    assert "Unhandled exception" not in run.stderr, run.describe()


def _register_request(s: Stage, *, via_host: str | None, authorization: str = "",
                      contact: str = "<sip:alice@127.0.0.99:9>") -> bytes:
    """A REGISTER for alice. `via_host` adds a Via for `probe` (which fills in the port);
    None leaves it out for sipsak, which puts its own."""
    headers = [
        ("Max-Forwards", "70"),
        ("From", f"<sip:alice@{HOST}:{s.server.udp_port}>;tag={os.urandom(4).hex()}"),
        ("To", f"<sip:alice@{HOST}:{s.server.udp_port}>"),
        ("Call-ID", f"probe-{os.urandom(6).hex()}"),
        ("CSeq", "1 REGISTER"),
        ("Contact", contact),
        ("Expires", "60"),
    ]
    if via_host is not None:
        branch = "z9hG4bK-probe-" + os.urandom(6).hex()
        headers.insert(0, ("Via", f"SIP/2.0/UDP {via_host}:LOCAL_PORT;branch={branch};rport"))
    if authorization:
        headers.append(("Authorization", authorization))
    return build_request("REGISTER", s.proxy_uri, headers)


def _probe_register(s: Stage, source: str, authorization: str = "") -> list[SipMessage]:
    """A REGISTER sent from `source` by a raw socket: the answers within 2 s."""
    return probe(source, s.proxy, _register_request(s, via_host=source,
                                                    authorization=authorization))


def _metric_samples(text: str, *words: str) -> dict[str, float]:
    """Samples (`name{labels}` → value) whose name holds every one of `words`."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if all(w in name for w in words):
            samples[key] = float(value)
    return samples


def test_svcrack_is_banned_after_five_failures(stage: Callable[..., Stage]) -> None:
    """svcrack with a list of a few hundred passwords, alice's last: the fifth wrong guess
    bans the source, which then gets no answer at all — not even to the right password —
    so the password is never found. The ban is a JSON log line (source, user, method) and a
    counter in /metrics; alice's phone, a quiet untrusted source and the trusted SIPp calls
    carry on untouched.

    MD5 only here: svcrack 0.3.3 cannot compute SHA-256 and, offered SHA-256 first, dies
    before its first guess — which would prove nothing about the ban."""
    s = stage(algorithms='["MD5"]')
    with legitimate_calls(s):
        run = _svcrack(s, "svcrack").wait(90)
    _assert_not_cracked(run)
    guesses = [m for m in run.messages("send") if m.get("authorization")]
    assert len(guesses) >= MAX_FAILURES, (
        f"svcrack made {len(guesses)} guesses, too few to test the ban:\n{run.describe()}")

    events = s.security_events(ATTACKER)
    kinds = [e["event"] for e in events]
    assert kinds == ["auth_failed"] * (MAX_FAILURES - 1) + ["source_banned"], (
        f"expected {MAX_FAILURES - 1} auth_failed then source_banned for {ATTACKER}, "
        f"logged: {events!r}")
    for event in events:
        assert (event.get("user"), event.get("method")) == ("alice", "REGISTER"), event

    # Banned: no answer, even with alice's right password on a nonce from the registrar.
    assert _probe_register(s, ATTACKER) == [], "the banned source is still answered"
    challenge = _probe_register(s, "127.0.0.1")
    assert challenge and challenge[-1].status == 401, challenge
    right = digest_authorization(challenge[-1].all("www-authenticate"), "alice",
                                 ALICE_PASSWORD, "REGISTER", s.proxy_uri)
    assert _probe_register(s, ATTACKER, right) == [], (
        "the banned source still gets answers with the right password")

    # Others are untouched: a quiet untrusted source is challenged, alice's phone registers.
    other = _probe_register(s, "127.0.0.67")
    assert other and other[-1].status == 401, f"a source that never failed: {other!r}"
    s.phone.register()

    metrics = s.metrics()
    banned = _metric_samples(metrics, "ban")
    failed = _metric_samples(metrics, "auth", "fail")
    context = (
        "\n/metrics lines naming auth or ban:\n"
        + "\n".join(line for line in metrics.splitlines() if "auth" in line or "ban" in line)
        + f"\nstatistics:get auth: {s.server.mi_result('statistics:get', statistics=['auth:'])}")
    assert any(v >= 1 for v in banned.values()), (
        f"no ban counted in /metrics (a sample whose name holds 'ban'){context}")
    assert any(v >= MAX_FAILURES for v in failed.values()), (
        f"fewer than {MAX_FAILURES} failed authentications in /metrics{context}")
    s.assert_nothing_got_through()


def test_svcrack_from_many_sources_is_stopped_per_user(stage: Callable[..., Stage]) -> None:
    """A guesser spread over several addresses: four svcrack runs from four sources are
    banned after five failures each; that makes alice's twenty, so a fifth source is banned
    at its first failure."""
    s = stage(algorithms='["MD5"]')
    first = ["127.0.0.70", "127.0.0.71", "127.0.0.72", "127.0.0.73"]
    with legitimate_calls(s):
        runs = [tool.wait(90) for tool in
                [_svcrack(s, f"svcrack-{source}", source) for source in first]]
        last = _svcrack(s, "svcrack-127.0.0.74", "127.0.0.74").wait(90)
    for run in [*runs, last]:
        _assert_not_cracked(run)
    for source in first:
        kinds = [e["event"] for e in s.security_events(source)]
        assert kinds == ["auth_failed"] * (MAX_FAILURES - 1) + ["source_banned"], (
            source, kinds)
    kinds = [e["event"] for e in s.security_events("127.0.0.74")]
    assert kinds == ["source_banned"], (
        f"after {USER_MAX_FAILURES} failures for alice, a new source failing once must be "
        f"banned at once; logged for it: {kinds}")
    s.phone.register()  # alice herself is not locked out
    s.assert_nothing_got_through()


# ----------------------------------------------------------------------------- sipsak


@dataclass
class SipsakRun:
    name: str
    args: list[str]
    returncode: int
    output: str

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in re.findall(r"^\s*SIP/2\.0 (\d{3}) ", self.output, re.M)]

    @property
    def final(self) -> int | None:
        finals = [code for code in self.statuses if code >= 200]
        return finals[-1] if finals else None


def sipsak(s: Stage, name: str, request: bytes, source: str = ATTACKER) -> SipsakRun:
    """Send `request` (a file for `sipsak -f`, which puts its own Via on top) from `source`
    to the proxy and wait for the final answer (at most 2 s for an INVITE: -D 4)."""
    binary = _tool("sipsak", "sipsak")
    path = s.tmp_path / f"sipsak-{name}.sip"
    path.write_bytes(request)
    port = free_port()
    args = [binary, "-vv", "-f", str(path), "-s", f"sip:{HOST}:{s.server.udp_port}",
            "-k", source, "-H", source, "-l", str(port), "-S", "-D", "4"]
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                          check=False)
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    (s.tmp_path / f"sipsak-{name}.log").write_text(output)
    return SipsakRun(name, args, done.returncode, output)


def _assert_all_refused(runs: list[SipsakRun]) -> None:
    """Every request got a final answer, and an error (>= 400)."""
    wrong = [r for r in runs if r.final is None or r.final < 400]
    assert not wrong, (
        "expected a final answer >= 400 to each:\n"
        + "\n".join(f"{r.name}: sipsak exit {r.returncode}, answers {r.statuses}" for r in runs)
        + "".join(f"\n--- sipsak {r.name} ---\n{r.output[-2000:]}" for r in wrong))


def _forged(method: str, uri: str, *, to_tag: str | None, route: str = "", to: str = "",
            from_: str = f"sip:mallory@{ATTACKER}", from_tag: str = "", call_id: str = "",
            cseq: int = 0) -> bytes:
    """A request as an attacker writes it (no Via: sipsak adds its own)."""
    headers = [
        ("From", f"<{from_}>;tag={from_tag or os.urandom(4).hex()}"),
        ("To", f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id or f"forged-{os.urandom(6).hex()}"),
        ("CSeq", f"{cseq or (2 if to_tag else 1)} {method}"),
        ("Max-Forwards", "70"),
        ("Contact", f"<{from_}>"),
    ]
    if route:
        headers.insert(0, ("Route", route))
    body = b""
    if method == "INVITE":
        headers.append(("Content-Type", "application/sdp"))
        body = (f"v=0\r\no=m 1 1 IN IP4 {ATTACKER}\r\ns=-\r\nc=IN IP4 {ATTACKER}\r\nt=0 0\r\n"
                "m=audio 4000 RTP/AVP 0\r\n").encode()
    elif method == "MESSAGE":
        headers.append(("Content-Type", "text/plain"))
        body = b"free calls for everyone"
    return build_request(method, uri, headers, body)


def test_forged_in_dialog_and_preloaded_route_requests_reach_nobody(
    stage: Callable[..., Stage],
) -> None:
    """Toll fraud with sipsak from 127.0.0.66: an INVITE to an outside number with a made-up
    To tag (alone, and with a Route to the proxy itself), the same toward alice, BYE and
    MESSAGE with made-up tags, and MESSAGEs with a preloaded Route to the outside host: each
    gets a final answer of 400 or more and none reaches the catcher or alice's phone. ACKs
    with made-up tags (sent by SIPp, `-i 127.0.0.66`) reach nobody either."""
    s = stage()
    outside = f"sip:0044123@{s.catcher.uri_host}"
    alice = f"sip:alice@{HOST}:{s.server.udp_port}"
    own_route = f"<sip:{HOST}:{s.server.udp_port};lr>"
    outside_route = f"<sip:{s.catcher.uri_host};lr>"
    cases = {
        "invite-forged-tag-outside": _forged("INVITE", outside, to_tag="f0rged1"),
        "invite-forged-tag-route-to-proxy": _forged("INVITE", outside, to_tag="f0rged2",
                                                    route=own_route),
        "invite-forged-tag-alice": _forged("INVITE", alice, to_tag="f0rged3"),
        "bye-forged-tag-outside": _forged("BYE", outside, to_tag="f0rged4"),
        "message-forged-tag-outside": _forged("MESSAGE", outside, to_tag="f0rged5"),
        "message-preloaded-route-outside": _forged("MESSAGE", outside, to_tag=None,
                                                   route=outside_route),
        "message-to-alice-preloaded-route-outside": _forged("MESSAGE", alice, to_tag=None,
                                                            route=outside_route),
    }
    acks = {  # an ACK is never answered, and sipsak waits 35 s for an answer: SIPp sends these
        "ack-forged-tag-outside": (outside, "X-No-Route: 1"),
        "ack-forged-tag-route-to-proxy": (outside, f"Route: {own_route}"),
        "ack-forged-tag-alice": (alice, "X-No-Route: 1"),
    }
    with legitimate_calls(s):
        runs = [sipsak(s, name, request) for name, request in cases.items()]
        for name, (target, route) in acks.items():
            ack = s.sipp(name, "forged_ack.xml", remote=f"{HOST}:{s.server.udp_port}",
                         local_port=free_port(), keys={"target": target, "route": route},
                         extra_args=("-i", ATTACKER)).wait()
            assert ack.returncode == 0, ack.describe()
    s.assert_nothing_got_through()
    _assert_all_refused(runs)


def test_a_callee_cannot_reuse_its_call_to_relay_elsewhere(stage: Callable[..., Stage]) -> None:
    """A trusted caller calls a UA outside (127.0.0.98, untrusted): that UA learns the call's
    Call-ID, tags and the proxy's signed Record-Route. With them, sipsak from its address
    sends an INVITE and a MESSAGE "in the dialog" but to a premium-rate number at the catcher,
    while the call is up and again after it ended: none is relayed. Its real in-dialog
    request (a BYE to the caller) still is."""
    s = stage()
    outsider_host = "127.0.0.98"
    callee = Phone("outsider", "", s.proxy, host=outsider_host)
    caller = Caller(s.proxy)
    s.closers += [callee.close, caller.close]
    with legitimate_calls(s):
        caller.call(callee.contact)
        invite = callee.requests("INVITE")[0]
        routes = invite.all("record-route")
        assert routes and all(";lr" in r for r in routes), invite.raw
        dialog = {"from_": callee.contact, "from_tag": caller.to_tag,
                  "to": caller.contact, "to_tag": caller.from_tag,
                  "call_id": caller.call_id, "route": ", ".join(routes)}
        premium = f"sip:0044123@{s.catcher.uri_host}"
        runs = [sipsak(s, f"reuse-live-{m.lower()}", _forged(m, premium, cseq=10 + n, **dialog),
                       source=outsider_host)
                for n, m in enumerate(("INVITE", "MESSAGE"))]
        bye = sipsak(s, "callee-bye", _forged("BYE", caller.contact, cseq=20, **dialog),
                     source=outsider_host)
        runs += [sipsak(s, f"reuse-ended-{m.lower()}",
                        _forged(m, premium, cseq=30 + n, **dialog), source=outsider_host)
                 for n, m in enumerate(("INVITE", "MESSAGE"))]
    assert bye.final == 200 and caller.requests("BYE"), (
        f"the callee's own BYE did not reach the caller: {bye.statuses}\n{bye.output[-2000:]}\n"
        + caller.describe())
    s.assert_nothing_got_through()
    _assert_all_refused(runs)


# ----------------------------------------------------------------------------- replay


def _captured_authorization(result: SippResult) -> str:
    """The Authorization header of the last REGISTER SIPp sent (from its -trace_msg log)."""
    text = result.files["messages"].read_text(errors="replace")
    found = re.findall(r"^Authorization:\s*(.+?)\s*$", text, re.M | re.I)
    assert found, f"no Authorization in SIPp's messages:\n{result.describe()}"
    return found[-1]


@pytest.mark.parametrize("client", ["sipp-md5", "phone-sha256"])
def test_replayed_register_is_refused(stage: Callable[..., Stage], client: str) -> None:
    """An attacker who sniffed one of alice's REGISTERs replays its Authorization from
    127.0.0.66 with its own Contact: 401, and alice's calls still reach her phone, not the
    attacker. The credentials are SIPp's (`[authentication]`, MD5: SIPp 3.6 knows no other
    and answers only the first challenge, so MD5 is offered first here) or the phone's own
    (SHA-256, offered first by default)."""
    if client == "sipp-md5":
        s = stage(algorithms='["MD5", "SHA-256"]')
        registration = s.sipp("alice-register", "register_auth.xml",
                              remote=f"{HOST}:{s.server.udp_port}", local_port=free_port(),
                              service="alice",
                              extra_args=("-au", "alice", "-ap", ALICE_PASSWORD)).wait()
        assert registration.returncode == 0, registration.describe()
        authorization = _captured_authorization(registration)
        s.phone.register()  # the phone is alice's newest binding again
    else:
        s = stage()
        authorization = s.phone.authorization
    params = auth_params(authorization)
    algorithm = client.rpartition("-")[2].upper().replace("SHA", "SHA-")
    assert params.get("username") == "alice" and params.get("response"), authorization
    assert params.get("algorithm", "MD5").upper() == algorithm, authorization

    with legitimate_calls(s):
        replays = [
            sipsak(s, f"replay-{n}", _register_request(
                s, via_host=None, authorization=authorization,
                contact=f"<sip:alice@{s.catcher.uri_host}>"))
            for n in (1, 2)
        ]
    for run in replays:
        assert run.final == 401, (
            f"{run.name}: a replayed Authorization was answered {run.final} "
            f"(expected 401)\n{run.output[-3000:]}")

    # alice's binding is the phone's: a trusted call to alice reaches it and completes.
    call = s.sipp("call-alice", "uac.xml", remote=f"{HOST}:{s.server.udp_port}",
                  local_port=free_port(), service="alice",
                  keys={"uas_port": s.server.udp_port}).wait()
    _check_calls(1, call)
    got = s.phone.requests()
    assert [r.method for r in got if r.method == "INVITE"] == ["INVITE"], (
        f"the call to alice missed her phone\n{s.phone.describe()}")
    assert all("sip:sipp@" in r.get("from") for r in got), (
        f"something besides the trusted call reached alice's phone\n{s.phone.describe()}")
    s.assert_nothing_got_through(phone_expected=len(got))
