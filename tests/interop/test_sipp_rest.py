"""Call operations through the REST API of `switchboard serve`, on real calls set up by SIPp
(A -> switchboard -> B, scenarios of tests/interop/scenarios/callops/): a transfer and a
hold asked over HTTP, their operations followed to the SIP outcome, an Idempotency-Key
retry that sends one REFER, and the problem details of what the node refuses. The events an
operation causes carry its id: in their parameters (a datagram subscriber), in the webhook
body and in the REST event stream."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import EventCollector
from tests.support.ports import free_port
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed
from tests.support.sipp import Sipp, StartSipp, killed_on_failure, received, wait_clean
from tests.support.webhooks import WebhookReceiver, verify

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios" / "callops"


def rest(server: SwitchboardServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{server.host}:{server.mi_port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def wait_done(server: SwitchboardServer, location: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, op = rest(server, "GET", location)
        assert status == 200, op
        if op["state"] != "pending" or time.monotonic() > deadline:
            return dict(op)
        time.sleep(0.1)


def start_call(sipp: StartSipp, server: SwitchboardServer, a_scenario: str,
               b_scenario: str) -> tuple[Sipp, Sipp, str]:
    b_port, a_port = free_port("udp"), free_port("udp")
    b = sipp("b", SCENARIOS / b_scenario, local_port=b_port, timeout=60).wait_listening()
    prefix = f"sb-rest-{secrets.token_hex(4)}-"
    a = sipp("a", SCENARIOS / a_scenario, remote=f"{server.host}:{server.udp_port}",
             local_port=a_port, timeout=60, keys={"uas_port": b_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    callid = f"{prefix}1@127.0.0.1"
    with killed_on_failure(a, b):
        wait_confirmed(server, callid)
    return a, b, callid


def test_transfer_over_rest_retried_sends_one_refer(
        sipp: StartSipp, switchboard_server: StartServer, events: EventCollector) -> None:
    """B declines the REFER (603). The POST, retried with the same Idempotency-Key, gets the
    same 202 and B sees one REFER; the operation ends `fail` with 603, and its
    E_CALL_TRANSFER events carry its id. The call, found by its dialog id, shows its legs; a
    transfer of a call that is gone is a 404 problem."""
    server = switchboard_server("--event-datagram", events.socket)
    a, b, callid = start_call(sipp, server, "uac_hangs_up.xml", "uas_refer_declined.xml")
    status, _, call = rest(server, "GET", f"/api/v1/calls/{callid}")
    assert status == 200 and call["state"] == "confirmed", call
    assert [leg["leg"] for leg in call["legs"]] == ["caller", "callee"]
    dest = f"sip:c@127.0.0.1:{free_port('udp')}"
    answers = [rest(server, "POST", f"/api/v1/calls/{call['id']}/transfer",
                    {"leg": "callee", "destination": dest}, {"Idempotency-Key": "once"})
               for _ in range(2)]
    (status, headers, op), again = answers
    assert status == 202, op
    assert again == answers[0]
    done = wait_done(server, headers["Location"])
    assert (done["state"], done["sip_status"], done["reason"]) == ("fail", 603, "Decline")
    assert [s["step"] for s in done["steps"]] == ["accepted", "sent", "start", "fail"]
    transfers = [n.params for n in events.all("E_CALL_TRANSFER")
                 if n.params["callid"] == callid]
    assert [(p["state"], p["operation_id"]) for p in transfers] == [
        ("start", op["id"]), ("fail", op["id"])], transfers
    _, b_result = wait_clean(a, b)
    assert len(received(b_result, "REFER")) == 1
    status, headers, problem = rest(server, "POST", f"/api/v1/calls/{callid}/transfer",
                                    {"leg": "callee", "destination": dest})
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "urn:switchboard:problem:no-such-call"


def test_hold_over_rest_reaches_ok(sipp: StartSipp, switchboard_server: StartServer) -> None:
    """Both parties answer the hold re-INVITE with 491 first; the proxy retries and both
    answer 200: the operation is `ok` once both legs are, and the call shows both on hold.
    A second hold while the first is still pending is refused: 409 operation-pending."""
    server = switchboard_server()
    a, b, callid = start_call(sipp, server, "uac_hold_glare.xml", "uas_hold_glare.xml")
    status, headers, op = rest(server, "POST", f"/api/v1/calls/{callid}/hold", {})
    assert status == 202, op
    status, _, problem = rest(server, "POST", f"/api/v1/calls/{callid}/hold",
                              {"leg": "caller"})
    assert (status, problem["type"]) == (409, "urn:switchboard:problem:operation-pending")
    assert problem["sip_status"] == 491
    done = wait_done(server, headers["Location"])
    assert done["state"] == "ok", done
    assert sorted((s["step"], s["leg"]) for s in done["steps"][2:]) == [
        ("ok", "callee"), ("ok", "caller"), ("start", "callee"), ("start", "caller")]
    status, _, call = rest(server, "GET", f"/api/v1/calls/{callid}")
    assert status == 200 and call["hold"] == "both", call
    status, _, problem = rest(server, "POST", f"/api/v1/calls/{callid}/hold",
                              {"leg": "caller", "headers": "Via: x"})
    assert (status, problem["field"]) == (422, "headers")
    wait_clean(a, b)


def test_a_rest_hold_s_events_carry_its_id_everywhere(
        sipp: StartSipp, switchboard_server: StartServer, events: EventCollector,
        tmp_path: Path) -> None:
    """A hold asked over REST: its E_CALL_HOLD events carry `operation_id` (and the answers'
    `status`) for a datagram subscriber, in the signed webhook body, and in the REST event
    stream, whose items name the operation; the operation reports the 200 it ended with."""
    secret = b"whsec-rest-ids"
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[events]\nwebhook_secret = "{secret.decode()}"\n', encoding="utf-8")
    with WebhookReceiver(secret) as hooks:
        server = switchboard_server("--config", str(config), "--event-webhook", hooks.url,
                                    "--event-datagram", events.socket)
        a, b, callid = start_call(sipp, server, "uac_hold_glare.xml", "uas_hold_glare.xml")
        stream = urllib.request.urlopen(
            f"http://{server.host}:{server.mi_port}/api/v1/events"
            f"?event=E_CALL_HOLD&call={callid}", timeout=30)
        streamed: list[dict[str, Any]] = []

        def read_stream() -> None:
            with stream:
                for line in stream:
                    if line.startswith(b"data: "):
                        streamed.append(json.loads(line[6:]))
                        if sum(1 for d in streamed if d["params"]["state"] != "start") == 2:
                            return

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        status, headers, op = rest(server, "POST", f"/api/v1/calls/{callid}/hold", {})
        assert status == 202, op
        done = wait_done(server, headers["Location"])
        assert (done["state"], done["sip_status"], done["reason"]) == ("ok", 200, "OK"), done
        hooks.wait_for(lambda got: sum(r.json["event"] == "E_CALL_HOLD" for r in got) >= 4,
                       "four E_CALL_HOLD webhooks")
        reader.join(30)
        wait_clean(a, b)
        delivered = [r for r in hooks.delivered() if r.json["event"] == "E_CALL_HOLD"]

    held = [n.params for n in events.all("E_CALL_HOLD") if n.params["callid"] == callid]
    assert sorted((p["leg"], p["state"], p.get("status")) for p in held) == [
        ("callee", "ok", "200 OK"), ("callee", "start", None),
        ("caller", "ok", "200 OK"), ("caller", "start", None)], held
    assert {p["operation_id"] for p in held} == {op["id"]}
    assert [r.json["params"] for r in delivered] == held
    for request in delivered:
        assert request.json["operation_id"] == op["id"]
        assert verify(secret, request.signature, request.body)
    assert not reader.is_alive(), streamed
    assert [d["params"] for d in streamed] == held
    assert {d["operation"] for d in streamed} == {op["id"]}
