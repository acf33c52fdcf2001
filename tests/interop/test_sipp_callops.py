"""Call operations through `switchboard serve`, with SIPp playing what real agents rarely do.

Every test sets up a call A -> switchboard -> B with SIPp (A: a UAC scenario aimed at the
proxy; B: a UAS), drives `callops:transfer` / `callops:hold` over the MI from here while SIPp
runs, and checks three things: what each SIPp agent saw (the scenarios pin every message, an
unexpected one fails the run), the exact E_CALL_TRANSFER / E_CALL_HOLD sequence a datagram
subscriber received, and the header values that matter (Refer-To, Request-URIs, CSeq), read
from the SIPp message logs.

A is usually the transferee (the proxy REFERs the caller leg, speaking for B; one test
REFERs the callee instead), C is the transfer target (a UAS the new call reaches through the
proxy). Scenarios: scenarios/callops/ (C reuses scenarios/uas_busy.xml).
Behaviour is switchboard's (issue 3, DESIGN.md §4), not the reference's where they differ:
`start` goes out with the REFER, a rejected or unanswered REFER raises `fail`, the dialog
can be transferred again, a NOTIFY before the new call is answered 200.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.support.events import EventCollector, Notification
from tests.support.ports import free_port
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed
from tests.support.sipp import (
    SipMessage,
    Sipp,
    SippResult,
    StartSipp,
    killed_on_failure,
    received,
    sip_messages,
    wait_clean,
)

pytestmark = [pytest.mark.sipp, pytest.mark.interop]


SCENARIOS = Path(__file__).resolve().parent / "scenarios" / "callops"
CALLOPS_EVENTS = ("E_CALL_TRANSFER", "E_CALL_HOLD")


# ----------------------------------------------------------------------------- events


def callops_events(events: EventCollector, callid: str | None = None) -> list[Notification]:
    """The call-operation events received so far (only `callid`'s if given), in order."""
    return [
        n
        for n in events.all()
        if n.method in CALLOPS_EVENTS and (callid is None or n.params.get("callid") == callid)
    ]


def wait_failed(events: EventCollector, callid: str, count: int = 1) -> None:
    """Wait until the call's transfers have failed `count` times."""
    events.wait_for(
        "E_CALL_TRANSFER", lambda p: p.get("callid") == callid and p.get("state") == "fail",
        timeout=10.0, count=count,
    )


def transfer(
    callid: str, leg: str, transfer_callid: str, destination: str, state: str, status: str = ""
) -> tuple[str, dict[str, Any]]:
    return (
        "E_CALL_TRANSFER",
        {
            "callid": callid,
            "leg": leg,
            "transfer_callid": transfer_callid,
            "destination": destination,
            "state": state,
            "status": status,
        },
    )


def busy_target(callid: str, destination: str) -> list[tuple[str, dict[str, Any]]]:
    """A transfer whose new call reaches a busy target: the REFER's `start`, A's early
    NOTIFY (100 Trying), the new call linked, its 486, and the final NOTIFY saying so."""
    new = f"xfer///{callid}"
    return [
        transfer(callid, "caller", "", destination, "start"),
        transfer(callid, "caller", "", "", "notify", "100 Trying"),
        transfer(callid, "caller", new, destination, "start"),
        transfer(callid, "caller", new, destination, "fail", "486 Busy Here"),
        transfer(callid, "caller", new, "", "notify", "486 Busy Here"),
    ]


def hold(callid: str, leg: str, action: str, state: str) -> tuple[str, dict[str, Any]]:
    return ("E_CALL_HOLD", {"callid": callid, "leg": leg, "action": action, "state": state})


def assert_events(
    events: EventCollector,
    callid: str,
    expected: list[tuple[str, dict[str, Any]]],
    settle: float = 0.5,
) -> None:
    """The call's events are exactly `expected`, in order (after `settle` s for stragglers)."""
    time.sleep(settle)
    got = [(n.method, n.params) for n in callops_events(events, callid)]
    assert got == expected, (
        "event sequence differs\n--- expected ---\n"
        + "\n".join(f"  {n} {p}" for n, p in expected)
        + "\n--- received ---\n"
        + "\n".join(f"  {n} {p}" for n, p in got)
    )


# ----------------------------------------------------------------------------- a call


def b_tag(a: SippResult) -> str:
    """B's tag, from the 200 A got for its INVITE."""
    for msg in sip_messages(a):
        if (
            msg.direction == "received"
            and msg.status == 200
            and "INVITE" in (msg.header("CSeq") or "")
        ):
            return (msg.header("To") or "").rpartition(";tag=")[2]
    raise AssertionError("A got no 200 for its INVITE")


@dataclass
class Call:
    """A call A -> switchboard -> B set up by SIPp, and what the test needs to know of it."""

    server: SwitchboardServer
    a: Sipp
    b: Sipp
    callid: str
    dialog_id: str
    a_port: int
    b_port: int

    def mi_ok(self, method: str, **params: Any) -> Any:
        reply = self.server.mi(method, params)
        assert "error" not in reply, f"{method} {params}: {reply!r}"
        return reply["result"]

    def transfer(self, leg: str, destination: str) -> None:
        assert (
            self.mi_ok("callops:transfer", callid=self.callid, leg=leg, destination=destination)
            == "Accepted"
        )

    def finish(self, *others: Sipp) -> list[SippResult]:
        """Wait for A, then B and the others; every run must be clean (`wait_clean`)."""
        return wait_clean(self.a, self.b, *others)

    def contact(self, party: str) -> str:
        """The Contact URI of SIPp party "a" or "b"."""
        if party == "a":
            return f"sip:sipp@127.0.0.1:{self.a_port};transport=UDP"
        return f"sip:127.0.0.1:{self.b_port};transport=UDP"

    def name_addr(self, party: str) -> str:
        """A regular expression for the From/To value (URI and tag) of party "a" or "b"."""
        if party == "a":
            return rf"<sip:sipp@127\.0\.0\.1:{self.a_port}>;tag=\S+SIPpTag00\d+"
        return rf"<sip:uas@127\.0\.0\.1:{self.b_port}>;tag=\S+SIPpTag01\d+"

    def assert_refer(self, refer: SipMessage, party: str, cseq: int, refer_to: str) -> None:
        """`refer` went to `party`'s Contact impersonating the other party (its URI and tag
        in From, its Contact), inside the dialog, with `cseq` and `refer_to`."""
        other = "b" if party == "a" else "a"
        assert refer.ruri == self.contact(party), refer.text
        assert refer.header("Call-ID") == self.callid
        assert refer.header("CSeq") == f"{cseq} REFER", refer.text
        assert re.fullmatch(self.name_addr(other), refer.header("From") or ""), refer.text
        assert re.fullmatch(self.name_addr(party), refer.header("To") or ""), refer.text
        assert refer.header("Contact") == f"<{self.contact(other)}>"
        assert refer.header("Refer-To") == refer_to, refer.text


def start_call(
    sipp: StartSipp,
    server: SwitchboardServer,
    a_scenario: str,
    b_scenario: str = "uas_callee.xml",
    *,
    callid_prefix: str = "sb-callops",
    timeout: float = 60.0,
) -> Call:
    """Start B, then A calling B through the proxy; return once the dialog is confirmed."""
    b_port, a_port = free_port("udp"), free_port("udp")
    b = sipp("b", SCENARIOS / b_scenario, local_port=b_port, timeout=timeout + 30).wait_listening()
    prefix = f"{callid_prefix}-{secrets.token_hex(4)}-"
    a = sipp(
        "a",
        SCENARIOS / a_scenario,
        remote=f"{server.host}:{server.udp_port}",
        local_port=a_port,
        timeout=timeout,
        keys={"uas_port": b_port},
        # SIPp expands %u (call number) and %s (local IP) in -cid_str.
        extra_args=("-cid_str", prefix + "%u@%s"),
    )
    callid = f"{prefix}1@127.0.0.1"
    with killed_on_failure(a, b):
        dialog = wait_confirmed(server, callid)
    return Call(server, a, b, callid, str(dialog["ID"]), a_port, b_port)


def nowhere() -> str:
    """A transfer destination nobody listens at."""
    return f"sip:c@127.0.0.1:{free_port('udp')}"


def start_target(sipp: StartSipp, scenario: str = "uas_busy.xml", name: str = "c") -> Sipp:
    """The transfer target C (a UAS)."""
    port = free_port("udp")
    path = SCENARIOS / scenario if (SCENARIOS / scenario).exists() else scenario
    return sipp(name, path, local_port=port).wait_listening()


# ----------------------------------------------------------------------------- transfers


def test_refer_declined_then_transferred_again(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """A declines the REFER (603): `fail` with the status, and the dialog is idle again — a
    second transfer is accepted and REFERs A again, continuing the CSeq of B's sequence."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_refer_declined.xml")
    dest = nowhere()
    call.transfer("caller", dest)
    wait_failed(events, call.callid)
    call.transfer("caller", dest)
    a, _ = call.finish()
    cid = call.callid
    assert_events(
        events,
        cid,
        [
            transfer(cid, "caller", "", dest, "start"),
            transfer(cid, "caller", "", dest, "fail", "603 Decline"),
            transfer(cid, "caller", "", dest, "start"),
        ],
    )
    refers = received(a, "REFER")
    assert len(refers) == 2, [r.text for r in refers]
    for number, refer in enumerate(refers, start=1):
        # Sent to A's Contact, impersonating B, with the next numbers of B's CSeq sequence (B
        # never sent a request: 1, then 2).
        call.assert_refer(refer, "a", number, f"<{dest};osid={call.dialog_id}>")


def test_refer_to_callee_declined(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """The REFER goes to the callee when `leg` says so, impersonating the caller: A's URI and
    tag in From, A's Contact, CSeq 2 (A's INVITE was 1). B declines; A's BYE that follows
    reaches B with its CSeq shifted above the REFER's (3), so B's sequence keeps increasing."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_hangs_up.xml", "uas_refer_declined.xml")
    dest = nowhere()
    call.transfer("callee", dest)
    a, b = call.finish()
    cid = call.callid
    assert_events(
        events,
        cid,
        [
            transfer(cid, "callee", "", dest, "start"),
            transfer(cid, "callee", "", dest, "fail", "603 Decline"),
        ],
    )
    [refer] = received(b, "REFER")
    call.assert_refer(refer, "b", 2, f"<{dest};osid={call.dialog_id}>")
    [bye] = received(b, "BYE")
    assert bye.header("CSeq") == "3 BYE", bye.text
    # ... and B's 200 is mapped back to A's number.
    answers = [m.header("CSeq") for m in sip_messages(a) if m.direction == "received"]
    assert "2 BYE" in answers and "3 BYE" not in answers, answers


@pytest.mark.slow
def test_refer_unanswered_times_out(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """A never answers the REFER (SIPp takes its retransmissions in silence): after Timer F
    (64*T1 = 32 s) `fail` "408 Request Timeout". Takes about 36 s."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_refer_unanswered.xml", timeout=80)
    dest = nowhere()
    started = time.monotonic()
    call.transfer("caller", dest)
    failed = events.wait_for_notification(
        "E_CALL_TRANSFER", lambda p: p.get("state") == "fail", timeout=40
    )
    assert 31.0 <= failed.received - started <= 38.0, failed.received - started
    a, _ = call.finish()
    cid = call.callid
    assert_events(
        events,
        cid,
        [
            transfer(cid, "caller", "", dest, "start"),
            transfer(cid, "caller", "", dest, "fail", "408 Request Timeout"),
        ],
    )
    refers = received(a, "REFER")
    assert len(refers) == 1 and refers[0].header("Refer-To") == f"<{dest};osid={call.dialog_id}>"


def test_transfer_to_busy_target_with_early_notify(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """The transferee reports `100 Trying` before placing the new call: the proxy answers that
    NOTIFY 200 and reports it with an empty transfer_callid (not the reference's 480). The new
    INVITE carries `;osid=<dialog id>`, is linked (`start` with the new Call-ID), reaches C
    without the parameter, and C's 486 decides `fail`. The final NOTIFY (486 sipfrag) is
    answered by the proxy too; B sees no NOTIFY at all, and no BYE until A hangs up."""
    server = switchboard_server("--event-datagram", events.socket)
    c = start_target(sipp, "uas_busy.xml")
    call = start_call(sipp, server, "uac_transfer_busy.xml")
    dest = f"sip:c@127.0.0.1:{c.local_port}"
    call.transfer("caller", dest)
    a, b, c_result = call.finish(c)
    cid, new = call.callid, f"xfer///{call.callid}"
    assert_events(events, cid, busy_target(cid, dest))
    osid_uri = f"{dest};osid={call.dialog_id}"
    [refer] = received(a, "REFER")
    assert refer.header("Refer-To") == f"<{osid_uri}>"
    [invite] = [
        m
        for m in sip_messages(a)
        if m.direction == "sent" and m.method == "INVITE" and m.header("Call-ID") == new
    ][:1]
    assert invite.ruri == osid_uri
    # The match parameter is taken out of the Request-URI only (spec §4.2 step 3).
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest, c_invite.text
    assert c_invite.header("To") == f"<{osid_uri}>", c_invite.text
    assert [m.method for m in sip_messages(b) if m.direction == "received" and m.method] == [
        "INVITE",
        "ACK",
        "BYE",
    ]


def test_notify_error_sipfrag_and_bad_body(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """A NOTIFY (Event: refer) whose body is not a sipfrag gets 400 and no event; one whose
    sipfrag reports `503 Service Unavailable` (with a header line after the status line) gets
    200 and a `notify` event with that status. Neither reaches B."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_notify_errors.xml")
    dest = nowhere()
    call.transfer("caller", dest)
    a, _ = call.finish()
    cid = call.callid
    assert_events(
        events,
        cid,
        [
            transfer(cid, "caller", "", dest, "start"),
            transfer(cid, "caller", "", "", "notify", "503 Service Unavailable"),
        ],
    )
    statuses = [
        m.status
        for m in sip_messages(a)
        if m.direction == "received" and m.status and "NOTIFY" in (m.header("CSeq") or "")
    ]
    assert statuses == [400, 200], statuses
    # Answered inside the dialog: B's To tag kept, not a tag of the proxy's own.
    for msg in sip_messages(a):
        if msg.direction == "received" and "NOTIFY" in (msg.header("CSeq") or ""):
            assert msg.header("To") == f"<sip:uas@127.0.0.1:{call.b_port}>;tag={b_tag(a)}"


# ----------------------------------------------------------------------------- hold


def _cseq(msg: SipMessage) -> int:
    return int((msg.header("CSeq") or "0").split()[0])


def test_hold_glare_is_retried(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """Both parties answer the hold re-INVITE with 491 (glare). The proxy ACKs the 491s and
    retries each leg once, with a higher CSeq, after the RFC 3261 §14.1 wait: 0-2 s toward
    the caller (it speaks for the callee then), 2.1-4 s toward the callee (it speaks for the
    Call-ID's owner). One `start` per leg, then `ok`. The call goes on: A's BYE reaches B
    with a CSeq above the proxy's retry."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_hold_glare.xml", "uas_hold_glare.xml")
    sent = time.monotonic()
    assert call.mi_ok("callops:hold", callid=call.callid) == "OK"
    a, b = call.finish()
    cid = call.callid
    assert_events(
        events,
        cid,
        [
            hold(cid, "caller", "hold", "start"),
            hold(cid, "callee", "hold", "start"),
            hold(cid, "caller", "hold", "ok"),
            hold(cid, "callee", "hold", "ok"),
        ],
    )
    # An MI-made operation is untracked: its events are OpenSIPS', with no operation id.
    assert not any("operation_id" in n.params for n in callops_events(events, cid))
    done = {
        n.params["leg"]: n.received - sent
        for n in callops_events(events, cid)
        if n.params["state"] == "ok"
    }
    # Measured from the MI call to the event: the lower bound is exact, the upper one has a
    # margin for a loaded host.
    assert done["caller"] < 2.0 + 1.0, done
    assert 2.1 <= done["callee"] < 4.0 + 1.0, done
    # Toward A the proxy continues B's sequence (B never sent a request: 1, 2), toward B
    # A's (its INVITE was 1: 2, 3). The offer is the SDP the leg last received, inactive,
    # with the o= version one above it (RFC 3264 §8).
    for result, first_cseq, origin in ((a, 1, "o=user2 "), (b, 2, "o=user1 ")):
        reinvites = [m for m in received(result, "INVITE") if ";tag=" in (m.header("To") or "")]
        assert [_cseq(m) for m in reinvites] == [first_cseq, first_cseq + 1], [
            m.text for m in reinvites
        ]
        for m in reinvites:
            assert "a=inactive" in m.body, m.text
            assert f"{origin}53655765 2353687638 " in m.body, m.text
        # The proxy ACKs both answers itself: the 491 inside its INVITE transaction (same
        # branch, RFC 3261 §17.1.1.3), the 200 as a new transaction (§13.2.2.4).
        acks = {_cseq(m): m for m in received(result, "ACK")}
        assert first_cseq in acks and first_cseq + 1 in acks, sorted(acks)
        glared, retried = reinvites
        assert acks[first_cseq].header("Via") == glared.header("Via"), acks[first_cseq].text
        assert acks[first_cseq + 1].header("Via") != retried.header("Via")
    [bye] = received(b, "BYE")
    assert _cseq(bye) > 3, bye.text


# ----------------------------------------------------------------------------- modes


def test_manual_mode_links_nothing_and_forwards_notify(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """`--mode manual` without a script: the Refer-To carries no match parameter, both
    NOTIFYs are relayed to B (whose 200s reach A), and the new call is not linked — after the
    REFER's `start` there is no event at all."""
    server = switchboard_server("--event-datagram", events.socket, "--mode", "manual")
    c = start_target(sipp, "uas_busy.xml")
    call = start_call(sipp, server, "uac_transfer_manual.xml", "uas_callee_notified.xml")
    dest = f"sip:c@127.0.0.1:{c.local_port}"
    call.transfer("caller", dest)
    a, b, c_result = call.finish(c)
    cid = call.callid
    assert_events(events, cid, [transfer(cid, "caller", "", dest, "start")])
    assert not [n for n in callops_events(events) if n.params.get("callid") != cid]
    [refer] = received(a, "REFER")
    assert refer.header("Refer-To") == f"<{dest}>", refer.text
    notifies = received(b, "NOTIFY")
    assert [n.body.split("\n", 1)[0] for n in notifies] == [
        "SIP/2.0 100 Trying",
        "SIP/2.0 486 Busy Here",
    ], [n.text for n in notifies]
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest


MANUAL_SCRIPT = """
# Manual mode as an integrator would script it: the transferee's new call is recognised (here
# by its Call-ID, xfer///<old Call-ID>, as the SIPp transferee builds it) and linked with
# call_blind_replace; the NOTIFYs of the transfer are answered by the proxy.
XFER = "xfer///"


def on_request(req):
    if req.method == "NOTIFY" and not req.is_initial:
        req.call_transfer_notify()
    elif req.method == "INVITE" and req.is_initial and req.call_id.startswith(XFER):
        req.call_blind_replace(req.call_id[len(XFER):])
"""


def test_manual_mode_script_links_with_call_blind_replace(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path
) -> None:
    """`--mode manual` with a routing script: no match parameter in the Refer-To, the script
    answers the NOTIFYs through `call_transfer_notify()` (B sees none) and links the new call
    with `call_blind_replace(old Call-ID)`: the same events as in param mode."""
    script = tmp_path / "manual_script.py"
    script.write_text(MANUAL_SCRIPT)
    server = switchboard_server(
        "--event-datagram", events.socket, "--mode", "manual", "--script", str(script)
    )
    c = start_target(sipp, "uas_busy.xml")
    call = start_call(sipp, server, "uac_transfer_busy.xml")
    dest = f"sip:c@127.0.0.1:{c.local_port}"
    call.transfer("caller", dest)
    a, b, c_result = call.finish(c)
    cid = call.callid
    assert_events(events, cid, busy_target(cid, dest))
    [refer] = received(a, "REFER")
    assert refer.header("Refer-To") == f"<{dest}>", refer.text
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest
    assert [m.method for m in sip_messages(b) if m.direction == "received" and m.method] == [
        "INVITE",
        "ACK",
        "BYE",
    ]


# RFC 3261 §25.1: what a URI parameter value may hold (`paramchar`).
_PARAMCHAR = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")


def test_callid_mode_links_by_escaped_call_id(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """`--mode callid`: the Refer-To carries `;osid=<Call-ID>`, escaped so that a Call-ID with
    `@` and `?` stays one URI parameter; the new INVITE carrying it is linked to the old call
    (`start` with the new Call-ID, then C's 486 decides `fail`), and reaches C without it."""
    server = switchboard_server("--event-datagram", events.socket, "--mode", "callid")
    c = start_target(sipp, "uas_busy.xml")
    call = start_call(sipp, server, "uac_transfer_busy.xml", callid_prefix="sb-cid?mode")
    dest = f"sip:c@127.0.0.1:{c.local_port}"
    call.transfer("caller", dest)
    a, _, c_result = call.finish(c)
    cid = call.callid
    assert "?" in cid and "@" in cid
    assert_events(events, cid, busy_target(cid, dest))
    [refer] = received(a, "REFER")
    match = re.fullmatch(rf"<{re.escape(dest)};osid=([^;?>]*)>", refer.header("Refer-To") or "")
    assert match, refer.text
    value = match.group(1)
    assert _PARAMCHAR.fullmatch(value) and unquote(value) == cid, value
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest, c_invite.text


def test_refer_to_from_destination_forms(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector
) -> None:
    """The match parameter goes inside the URI: after the destination's own parameters,
    before its `?headers`; a destination given in `<>` is unwrapped. Three transfers of one
    call (each REFER declined, so the dialog is idle again for the next)."""
    server = switchboard_server("--event-datagram", events.socket)
    call = start_call(sipp, server, "uac_refer_declined_3.xml")
    host = f"c@127.0.0.1:{free_port('udp')}"
    osid = f"osid={call.dialog_id}"
    cases = [
        # (destination, Refer-To, event destination)
        (
            f"sip:{host};transport=udp;foo=bar",
            f"<sip:{host};transport=udp;foo=bar;{osid}>",
            f"sip:{host};transport=udp;foo=bar",
        ),
        (f"sip:{host}?X-Foo=1", f"<sip:{host};{osid}?X-Foo=1>", f"sip:{host}?X-Foo=1"),
        (f"<sip:{host}>", f"<sip:{host};{osid}>", f"sip:{host}"),
    ]
    for number, (destination, _, _) in enumerate(cases, start=1):
        call.transfer("caller", destination)
        # Wait for its `fail` (the 603): until then a new transfer would get 491.
        wait_failed(events, call.callid, number)
    a, _ = call.finish()
    cid = call.callid
    expected = []
    for _, _, shown in cases:
        expected += [
            transfer(cid, "caller", "", shown, "start"),
            transfer(cid, "caller", "", shown, "fail", "603 Decline"),
        ]
    assert_events(events, cid, expected)
    refers = received(a, "REFER")
    assert [r.header("Refer-To") for r in refers] == [refer_to for _, refer_to, _ in cases]
    assert [_cseq(r) for r in refers] == [1, 2, 3]
