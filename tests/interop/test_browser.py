"""A browser phone through `switchboard serve`: JsSIP in headless Chromium over WSS.

The page (tests/interop/browser/phone.js, JsSIP bundled for the browser by esbuild at test
time) runs in Debian's `chromium`, driven over the Chrome DevTools Protocol
(tests/support/chromium.py): the browser's own WebSocket and WebRTC, fake media devices
(`--use-fake-device-for-media-stream`, `--use-fake-ui-for-media-stream`). switchboard's
`wss:` listener has a self-signed certificate, which the browser accepts through
`--ignore-certificate-errors-spki-list` with that certificate's key hash (nothing else is
trusted). SIPp (UDP) calls the phone; the call is held, unheld and blind-transferred from the
MI to a second tab of the same browser, whose call with the first is real WebRTC: ICE over
loopback, DTLS-SRTP, the fake microphone's audio counted in both tabs' RTP statistics.

Network namespace: the whole test runs in a private network namespace with only `lo`. The
`private_net` fixture moves pytest's main thread into a new one (unshare(2) with
CLONE_NEWNET, as `unshare -n` does, then `ip link set lo up`; tests/support/netns.py) before
anything else starts, and back at the end. Every process the test starts (switchboard, SIPp,
Chromium, esbuild) is forked from that thread and so lives in the namespace, and every socket
the test opens (the MI client, the HEP collector, the page server, DevTools) is created in it.
Chromium gathers no ICE candidate on loopback unless `--allow-loopback-in-peer-connection` is
given; with it, `lo` is all it has. Needs root, as the test command runs.

The wire is checked on both ends: switchboard's HEP mirror (`--hep`, read back by
tests/support/hep_collector.py) for what switchboard received, and the browser's network
stack, through CDP, for the WebSocket handshake (with its `Origin`) and every frame the
browser sent and received. What switchboard sends to a browser is read on the browser's
side: the mirror drops the requests it sends to a client known only by its `.invalid` name
(HEP carries IP addresses, and that name is what the mirror is given).
Screenshots of both tabs at each step go to the test's tmp_path (`screenshots/`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import browser_phone
from tests.support.browser_phone import BrowserPhone, build_page, serve_page
from tests.support.certs import make_pki
from tests.support.chromium import Chromium
from tests.support.hep_collector import Captured, HepCollector
from tests.support.netns import interfaces, private_network
from tests.support.ports import HOST, free_port
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed
from tests.support.sipp import StartSipp, assert_clean

pytestmark = [pytest.mark.interop, pytest.mark.sipp, pytest.mark.timeout(240)]

CALLER = Path(__file__).resolve().parent / "browser" / "uac_webrtc.xml"


def spki_hash(certificate: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what --ignore-certificate-errors-spki-list takes."""
    def openssl(*args: str, data: bytes) -> bytes:
        return subprocess.run(["openssl", *args], input=data, check=True, capture_output=True,
                              timeout=30).stdout
    pem = openssl("x509", "-pubkey", "-noout", data=certificate.read_bytes())
    der = openssl("pkey", "-pubin", "-outform", "der", data=pem)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass
class BrowserBench:
    server: SwitchboardServer
    wss_port: int
    hep: HepCollector
    browser: Chromium
    page_url: str
    shots: Path
    phones: dict[str, BrowserPhone] = field(default_factory=dict)

    @property
    def wss_url(self) -> str:
        return f"wss://{HOST}:{self.wss_port}"

    def phone(self, user: str) -> BrowserPhone:
        """A new tab with the phone registered as sip:USER@127.0.0.1."""
        phone = BrowserPhone(self.browser.open(self.page_url, f"browser-{user}"))
        self.phones[user] = phone
        registered = phone.start(self.wss_url, f"sip:{user}@{HOST}")
        assert ".invalid;transport=ws" in registered["contact"], registered
        return phone

    def screenshot(self, step: str) -> None:
        for user, phone in self.phones.items():
            phone.page.evaluate("window.phone.render()")
            phone.page.screenshot(self.shots / f"{step}-{user}.png")

    def received(self, match: Callable[[Captured], bool], what: str) -> Captured:
        """The first message switchboard received on its wss: port that `match`es (HEP)."""
        return self.hep.wait_for(lambda m: self.to_switchboard(m) and match(m), what=what)

    def to_switchboard(self, message: Captured) -> bool:
        return message.dst == (HOST, self.wss_port)

    def from_switchboard(self, message: Captured) -> bool:
        return message.src == (HOST, self.wss_port)


@pytest.fixture
def private_net() -> Iterator[None]:
    with private_network():
        assert interfaces() == ["lo"]
        yield


@pytest.fixture
def bench(private_net: None, switchboard_server: StartServer, tmp_path: Path
          ) -> Iterator[BrowserBench]:
    """switchboard on udp: and wss: (self-signed), mirrored to a HEP collector; the page
    built and served; a headless Chromium. All inside the private network namespace."""
    why = browser_phone.missing()
    if why is not None:
        pytest.fail(why, pytrace=False)  # never a silent skip: scripts/test installs them
    hep = HepCollector()
    cert = make_pki(tmp_path / "pki").self_signed("switchboard")
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[tls]\ncertificate = "{cert.certificate}"\n'
                      f'private_key = "{cert.private_key}"\n'
                      "[websocket]\nping_interval = 5\n")
    wss_port = free_port("tcp")
    server = switchboard_server("--config", str(config), "--listen", f"wss:{HOST}:{wss_port}",
                                "--hep", hep.address, tcp=False)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve_page(build_page(tmp_path / "page")) as url:
        browser = Chromium(tmp_path / "chromium", [
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            f"--ignore-certificate-errors-spki-list={spki_hash(cert.certificate)}",
        ])
        board = BrowserBench(server, wss_port, hep, browser, url, shots)
        try:
            yield board
        finally:
            for phone in board.phones.values():
                print(phone.describe())
            print(browser.describe(20))
            browser.close()
            hep.close()


def in_call(callid: str, *, method: str | None = None, status: int | None = None,
            cseq: str | None = None) -> Callable[[Captured], bool]:
    """Matches a message of the call `callid` (a request `method`, a response `status`, a
    `CSeq` value, as given)."""
    def match(m: Captured) -> bool:
        return (m.header("Call-ID") == callid and (method is None or m.method == method)
                and (status is None or m.status == status)
                and (cseq is None or m.header("CSeq") == cseq))
    return match


def wait_received(phone: BrowserPhone, match: Callable[[Captured], bool], what: str,
                  timeout: float = 10.0, after: int = 0) -> Captured:
    """The first SIP message the browser received (a WebSocket frame, as its network stack
    reports it) that `match`es, from its `after`th frame on."""
    deadline = time.monotonic() + timeout
    while True:
        for frame in phone.frames("received")[after:]:
            message = Captured(("switchboard", 0), (phone.name, 0), frame.encode())
            if match(message):
                return message
        if time.monotonic() > deadline:
            raise AssertionError(f"{phone.name} received no {what} in {timeout} s:\n"
                                 + "\n".join(f[:100] for f in phone.frames("received")))
        time.sleep(0.1)


def _sdp_lines(message: Captured) -> list[str]:
    return message.body.split("\r\n")


def test_browser_phone_called_held_unheld_and_transferred(bench: BrowserBench,
                                                           sipp: StartSipp) -> None:
    server = bench.server
    alice = bench.phone("alice")
    bob = bench.phone("bob")
    bench.screenshot("1-registered")

    # -- REGISTER over WSS, as switchboard received it (RFC 7118 §5, RFC 5626 §4.2, RFC 5768)
    register = bench.hep.wait_for(
        lambda m: m.method == "REGISTER" and "sip:alice@" in m.header("To")
        and bench.to_switchboard(m), what="alice's REGISTER")
    assert register.header("Via").startswith("SIP/2.0/WSS "), register.text
    assert re.search(r"^SIP/2\.0/WSS [a-z0-9]+\.invalid;", register.header("Via")), register.text
    contact = register.header("Contact")
    assert re.match(r"<sip:[a-z0-9]+@[a-z0-9]+\.invalid;transport=ws>", contact), contact
    params = {p.strip().partition("=")[0]: p.strip().partition("=")[2]
              for p in contact.split(">", 1)[1].split(";") if p.strip()}
    assert "+sip.ice" in params, contact
    assert params["reg-id"] == "1", contact
    assert re.fullmatch(r'"<urn:uuid:[0-9a-f-]{36}>"', params["+sip.instance"]), contact
    supported = {t.strip() for t in register.header("Supported").split(",")}
    assert {"path", "gruu", "outbound"} <= supported, register.text
    bench.hep.wait_for(lambda m: m.status == 200 and m.header("Call-ID")
                       == register.header("Call-ID") and bench.from_switchboard(m),
                       what="the 200 to alice's REGISTER")
    # ... and as the browser sent it: the same frame, after a handshake over TLS that offered
    # the subprotocol `sip` and carried the page's Origin.
    assert any(f.startswith("REGISTER ") and register.header("Call-ID") in f
               for f in alice.frames("sent")), alice.frames("sent")[:3]
    [handshake] = alice.handshakes()
    headers = {k.lower(): v for k, v in handshake["headers"].items()}
    assert handshake["url"] == f"{bench.wss_url}/", handshake
    assert headers["origin"] == bench.page_url.rsplit("/", 1)[0], headers
    assert headers["sec-websocket-protocol"] == "sip", headers
    [answer] = alice.handshake_responses()
    assert answer["status"] == 101, answer
    assert {k.lower(): v for k, v in answer["headers"].items()}["sec-websocket-protocol"] == "sip"

    # -- SIPp calls alice; the page answers with WebRTC
    caller = sipp("a", CALLER, local_port=free_port("udp"),
                  remote=f"{HOST}:{server.udp_port}", service="alice",
                  keys={"uas_port": server.udp_port}, timeout=150, recv_timeout=60)
    callid = alice.wait_event("session", originator="remote")["call_id"]
    alice.wait_event("confirmed", index=0)
    wait_confirmed(server, callid)
    invite = wait_received(alice, lambda m: m.method == "INVITE"
                           and m.header("Call-ID") == callid, what="the INVITE")
    assert invite.headers("Via")[0].startswith(f"SIP/2.0/WSS {HOST}:"), invite.text
    # RFC 5658: the call crosses from UDP to WSS, so both sides get a Record-Route.
    routes = ",".join(invite.headers("Record-Route")).split(",")
    assert len(routes) == 2 and any("transport=ws" in r for r in routes), routes
    ok = bench.hep.wait_for(lambda m: m.status == 200 and m.header("Call-ID") == callid
                            and bench.to_switchboard(m), what="alice's 200")
    sdp = _sdp_lines(ok)
    assert any(line.startswith("m=audio ") and "UDP/TLS/RTP/SAVPF" in line for line in sdp), sdp
    assert any(line.startswith("a=fingerprint:sha-256 ") for line in sdp), sdp
    # ICE candidates gathered on loopback, the only interface there is.
    candidates = [line for line in sdp if line.startswith("a=candidate:")]
    assert candidates and all(f" {HOST} " in c for c in candidates), sdp
    [session] = alice.state()["sessions"]
    assert session["established"] and session["direction"] == "incoming", session
    assert session["on_hold"] == {"local": False, "remote": False}, session
    bench.screenshot("2-answered")

    # -- held and unheld from the MI: a re-INVITE reaches the phone over its WebSocket
    for action, direction, held in (("hold", "a=inactive", True), ("unhold", "a=sendrecv", False)):
        seen = len(alice.frames("received"))
        assert server.mi_result(f"callops:{action}", callid=callid) == "OK"
        alice.wait_event(action, index=0, originator="remote")
        reinvite = wait_received(alice, in_call(callid, method="INVITE"),
                                 what=f"the {action} re-INVITE", after=seen)
        assert direction in _sdp_lines(reinvite), reinvite.text
        cseq = reinvite.header("CSeq")
        answered = bench.received(in_call(callid, status=200, cseq=cseq),
                                  what=f"alice's 200 to the {action} re-INVITE")
        assert direction in _sdp_lines(answered), answered.text
        # The proxy ACKs the answer itself (RFC 3261 §13.2.2.4).
        wait_received(alice, in_call(callid, cseq=f"{cseq.split()[0]} ACK"),
                      what=f"the ACK of the {action}", after=seen)
        [session] = alice.state()["sessions"]
        assert session["on_hold"]["remote"] is held and session["established"], session
        bench.screenshot(f"3-{action}")

    # -- blind transfer from the MI: alice gets the REFER, accepts it and calls bob
    destination = f"sip:bob@{HOST}"
    assert server.mi_result("callops:transfer", callid=callid, leg="callee",
                            destination=destination) == "Accepted"
    refer = alice.wait_event("refer", index=0)
    assert refer["target"].startswith(f"{destination};"), refer
    new_callid = bob.wait_event("session", originator="remote")["call_id"]
    bob.wait_event("confirmed", index=0)
    alice.wait_event("confirmed", index=1)
    # The transfer succeeded: the proxy ends the old call on both sides.
    assert alice.wait_event("ended", index=0)["originator"] == "remote"
    assert_clean(caller.wait())
    on_wire = wait_received(alice, lambda m: m.method == "REFER"
                            and m.header("Call-ID") == callid, what="the REFER")
    assert on_wire.header("Refer-To") == f"<{refer['target']}>", on_wire.text
    bench.hep.wait_for(lambda m: m.status == 202 and m.header("Call-ID") == callid
                       and bench.to_switchboard(m), what="alice's 202 to the REFER")
    notify = bench.hep.wait_for(lambda m: m.method == "NOTIFY" and m.header("Call-ID") == callid
                                and m.body.startswith("SIP/2.0 200")
                                and bench.to_switchboard(m), what="alice's NOTIFY 200")
    assert notify.header("Event").startswith("refer"), notify.text
    wait_received(alice, lambda m: m.method == "BYE" and m.header("Call-ID") == callid,
                  what="the BYE of the old call")
    sent = bench.received(in_call(new_callid, method="INVITE"), what="alice's INVITE to bob")
    assert sent.start_line.startswith(f"INVITE {refer['target']} "), sent.text
    # Linked to the old call by the match parameter, which is taken out before bob sees it.
    reached = wait_received(bob, in_call(new_callid, method="INVITE"), what="the INVITE")
    assert re.match(r"INVITE sip:[a-z0-9]+@[a-z0-9]+\.invalid;transport=ws SIP/2\.0$",
                    reached.start_line), reached.text
    assert reached.headers("Via")[0].startswith(f"SIP/2.0/WSS {HOST}:"), reached.text
    sessions = alice.state()["sessions"]
    assert [s["ended"] for s in sessions] == [True, False], sessions
    assert sessions[1]["direction"] == "outgoing" and sessions[1]["established"], sessions

    # -- alice and bob, two browser tabs, talk: ICE over loopback, RTP both ways
    for phone in (alice, bob):
        index = 1 if phone is alice else 0
        phone.page.wait_until(
            f"window.phone.media({index}).then(m => ['connected', 'completed'].includes(m.ice)"
            " && m.packets_received > 0 && m.packets_sent > 0)",
            timeout=20, what=f"{phone.name}: audio flowing")
    bench.screenshot("4-transferred")
    alice.hangup()
    assert bob.wait_event("ended", index=0)["originator"] == "remote"
    bench.screenshot("5-ended")
    assert server.proc.poll() is None
