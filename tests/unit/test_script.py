"""The routing-script API: loading, decisions (relay, reply, drop), a failing script, and the
callops script functions in manual mode, on the sans-IO proxy with a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.events.opensips import opensips_event
from switchboard.script import RequestContext, ScriptError, install_script, load_script
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.dialog import DialogStateChanged
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    BOB_CONTACT,
    Net,
    invite,
    one,
    reply,
    sip_request,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "manual_mode.py"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(body)
    return path


def install(net: Net, script: Callable[[RequestContext], None]) -> None:
    """The script on the test proxy, with call operations on top, as `serve` wires it."""
    install_script(net.proxy, CallOps(net.proxy), script)


def test_a_script_without_on_request_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="on_request"):
        load_script(write(tmp_path, "x = 1\n"))


def test_a_script_that_does_not_import_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="ZeroDivisionError"):
        load_script(write(tmp_path, "1 / 0\n"))


def test_reply_answers_statefully_and_nothing_is_relayed(tmp_path: Path) -> None:
    net = Net()
    install(net, load_script(write(tmp_path, (
        "def on_request(req):\n"
        "    if req.method == 'MESSAGE':\n"
        "        req.reply(405, 'Not Here')\n"))))
    out = net.send(sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKm1"), ALICE)
    d, msg = one(out, ALICE)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (405, "Not Here")
    # A retransmission gets the same answer from the transaction, without the script.
    d2, _ = one(net.send(sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKm1"), ALICE))
    assert d2.data == d.data


def test_no_decision_relays(tmp_path: Path) -> None:
    seen: list[str] = []
    net = Net()

    def hook(req: RequestContext) -> None:
        seen.append(req.method)

    install(net, hook)
    out = net.send(invite(), ALICE)
    assert seen == ["INVITE"]
    assert [d.dest for d in out] == [ALICE, BOB]  # 100 Trying up, INVITE down


def test_drop_sends_nothing_and_leaves_no_transaction(tmp_path: Path) -> None:
    net = Net()
    install(net, load_script(write(tmp_path, (
        "def on_request(req):\n    req.drop()\n"))))
    assert net.send(sip_request("OPTIONS", BOB_CONTACT, branch="z9hG4bKo1"), ALICE) == []
    assert net.proxy.server_txns == {}


def test_a_script_that_raises_answers_500_and_the_proxy_goes_on(tmp_path: Path) -> None:
    net = Net()
    install(net, load_script(write(tmp_path, (
        "def on_request(req):\n"
        "    if req.method == 'OPTIONS':\n"
        "        raise RuntimeError('boom')\n"))))
    _, msg = one(net.send(sip_request("OPTIONS", BOB_CONTACT, branch="z9hG4bKo2"), ALICE))
    assert isinstance(msg, Response) and msg.status == 500
    out = net.send(invite(), ALICE)
    assert [d.dest for d in out] == [ALICE, BOB]


def _confirmed_call(net: Net) -> None:
    out = net.send(invite(), ALICE)
    fwd = parse_message(out[1].data)
    net.send(reply(fwd, 200), BOB)
    net.send(sip_request("ACK", BOB_CONTACT, branch="z9hG4bKack", to_tag="bob-tag",
                         routes=("<sip:127.0.0.1:5060;lr>",)), ALICE)


def test_example_manual_mode_transfer_links_and_answers_notify() -> None:
    net = Net(callops_mode="manual")
    install(net, load_script(EXAMPLE))
    _confirmed_call(net)
    net.events()
    # Bob asks, in-band, for Alice to be moved to Carol.
    info = sip_request(
        "INFO", "sip:alice@127.0.0.1:5061", branch="z9hG4bKinfo", from_tag="bob-tag",
        to_tag="alice-tag", from_uri="sip:bob@127.0.0.1", to_uri="sip:alice@127.0.0.1",
        contact=BOB_CONTACT, routes=("<sip:127.0.0.1:5060;lr>",),
        via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKinfo",
        extra=("X-Transfer-To: <sip:carol@127.0.0.1:5063>",))
    out = net.send(info, BOB)
    refer = [parse_message(d.data) for d in out if d.dest == ALICE]
    assert isinstance(refer[0], Request) and refer[0].method == "REFER"
    assert refer[0].get("refer-to") == "<sip:carol@127.0.0.1:5063>"  # manual: no param
    answers = [parse_message(d.data) for d in out if d.dest == BOB]
    assert isinstance(answers[0], Response) and answers[0].status == 200
    # Alice's NOTIFY is answered by the proxy on the script's say-so, not relayed to Bob.
    notify = sip_request(
        "NOTIFY", BOB_CONTACT, branch="z9hG4bKn1", to_tag="bob-tag", cseq=2,
        routes=("<sip:127.0.0.1:5060;lr>",), extra=("Event: refer",
                                                    "Content-Type: message/sipfrag"),
        body=b"SIP/2.0 100 Trying\r\n")
    out = net.send(notify, ALICE)
    _, msg = one(out, ALICE)
    assert isinstance(msg, Response) and msg.status == 200
    # Alice's new call is linked by the script (call_blind_replace).
    net.send(invite(branch="z9hG4bKnew", ruri="sip:carol@127.0.0.1:5063", call_id="call-2"),
             ALICE)
    transfer = [opensips_event(e)[1] for e in net.events()
                if not isinstance(e, DialogStateChanged)]
    assert [(p["state"], p["transfer_callid"]) for p in transfer] == [
        ("start", ""), ("notify", ""), ("start", "call-2")]
