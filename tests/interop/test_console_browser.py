"""The operator console driven in a real headless browser (Debian's chromium through
Playwright) against `switchboard serve` with SIPp calls (A -> switchboard -> B, scenarios in
tests/interop/scenarios/console/; C, the transfer target, is tests/interop/scenarios/
uas_wait_bye.xml): the call appears in the page; its Hold button puts the callee on hold (B
answers the re-INVITE, which offers no media back); the ladder shows the call's messages from
the node's capture; its transfer form transfers B to C blind: B accepts the REFER, reports
progress in NOTIFYs and calls C through the proxy, the transfer's operation ends `ok`, the new
call B -> C appears and the old one, ended by the proxy, leaves the page; End on the new call
sends the BYEs and it leaves the page too. Screenshots of each step are saved under the test's
tmp_path.

The browser stays on loopback without a network namespace of its own (which would have to hold
switchboard and SIPp too): see tests/support/browser_console.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser_console import console_page
from tests.support.ports import free_port
from tests.support.server import StartServer, SwitchboardServer, wait_confirmed
from tests.support.sipp import StartSipp, killed_on_failure, received, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios" / "console"
TARGET = SCENARIOS.parent / "uas_wait_bye.xml"


def operation(server: SwitchboardServer, operation_id: str) -> dict[str, Any]:
    """`GET /api/v1/operations/{id}` on the node's management server."""
    url = f"http://127.0.0.1:{server.mi_port}/api/v1/operations/{operation_id}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def wait_operation_done(server: SwitchboardServer, operation_id: str,
                        timeout: float = 20.0) -> dict[str, Any]:
    """The operation once it is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        doc = operation(server, operation_id)
        if doc["state"] != "pending" or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def captured(server: SwitchboardServer, callid: str) -> list[str]:
    """The first lines of a call's messages in the node's capture (kept after the call ends)."""
    url = (f"http://127.0.0.1:{server.mi_port}/api/v1/calls/"
           f"{urllib.parse.quote(callid, safe='')}/messages")
    with urllib.request.urlopen(url, timeout=5) as answer:
        doc = json.load(answer)
    return [m["first_line"] for m in doc["messages"]]


def row_selector(callid: str) -> str:
    return f'[data-call-id="{callid}"]'


async def test_console_holds_transfers_and_ends_a_sipp_call(
        sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path) -> None:
    server = switchboard_server()
    b_port, a_port, c_port = free_port("udp"), free_port("udp"), free_port("udp")
    b = sipp("b", SCENARIOS / "uas_transferee.xml", local_port=b_port,
             timeout=90).wait_listening()
    c = sipp("c", TARGET, local_port=c_port, timeout=90).wait_listening()
    prefix = f"sb-console-{secrets.token_hex(4)}-"
    callid = f"{prefix}1@127.0.0.1"
    new_callid = f"xfer///{callid}"
    shots = tmp_path / "shots"
    a = sipp("a", SCENARIOS / "uac_ended.xml", remote=f"{server.host}:{server.udp_port}",
             local_port=a_port, timeout=90, keys={"uas_port": b_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    with killed_on_failure(a, b, c):
        async with console_page(f"http://127.0.0.1:{server.mi_port}", shots) as page:
            await page.goto("/")
            await asyncio.to_thread(wait_confirmed, server, callid)
            row = page.locator(row_selector(callid))
            await row.wait_for()
            assert await row.get_attribute("data-state") == "confirmed"
            await page.screenshot(path=str(shots / "1-call.png"), full_page=True)

            await row.locator("select.hold-leg").select_option("callee")
            await row.locator("button.hold").click()
            await page.wait_for_function(
                f"document.querySelector('{row_selector(callid)}')"
                "?.dataset.hold !== 'none'", timeout=20000)
            # The callee's leg is shown on hold (the caller answered the proxy's re-INVITE
            # with a=inactive too, so the caller may show held as well).
            assert await row.locator("tr.leg.callee td").nth(4).text_content() == "yes"
            await page.screenshot(path=str(shots / "2-held.png"), full_page=True)

            # The ladder of the call before it is transferred away (the row goes with it):
            # the hold re-INVITEs to both parties' Contacts (answered before the page showed
            # the hold), no BYE.
            await row.locator("button.ladder-toggle").click()
            ladder = row.locator(".ladder svg text.label")
            await ladder.filter(has_text="ACK").first.wait_for()
            labels = await ladder.all_text_contents()
            assert labels[0].startswith("INVITE ") and "BYE" not in " ".join(labels)
            assert any(label.startswith(f"INVITE sip:127.0.0.1:{b_port};")
                       for label in labels), labels
            assert any(label.startswith(f"INVITE sip:sipp@127.0.0.1:{a_port};")
                       for label in labels), labels
            await page.screenshot(path=str(shots / "3-ladder.png"), full_page=True)

            destination = f"sip:carol@127.0.0.1:{c_port}"
            await row.locator("select.transfer-leg").select_option("callee")
            await row.locator("input.destination").fill(destination)
            # The operation id from the page's own request (the row, and its read-out of the
            # operation, may be gone before a locator could read it).
            async with page.expect_response(
                    lambda r: r.request.method == "POST" and r.url.endswith("/transfer")
            ) as posted:
                await row.locator("button.transfer").click()
            answer = await posted.value
            assert answer.status == 202, await answer.text()
            operation_id = (await answer.json())["id"]
            # The operation follows the transfer's events to its end: the new call was linked
            # (`linked`), then answered (`ok`).
            done = await asyncio.to_thread(wait_operation_done, server, operation_id)
            assert done["kind"] == "transfer" and done["state"] == "ok", done
            assert done["sip_status"] == 200, done
            steps = [step["step"] for step in done["steps"]]
            assert steps.index("linked") < steps.index("ok"), steps

            # The new call B -> C shows, linked to the old one; the old one, ended by the
            # proxy once the transfer was done, leaves the page.
            new_row = page.locator(row_selector(new_callid))
            await new_row.wait_for(timeout=20000)
            await page.wait_for_function(
                f"document.querySelector('{row_selector(new_callid)}')"
                "?.dataset.state === 'confirmed'", timeout=20000)
            await new_row.locator("button.link").filter(has_text=callid).first.wait_for()
            await row.wait_for(state="detached", timeout=20000)
            await page.screenshot(path=str(shots / "4-transferred.png"), full_page=True)

            await new_row.locator("button.end").click()
            await new_row.wait_for(state="detached", timeout=20000)
            await page.screenshot(path=str(shots / "5-ended.png"), full_page=True)
            # The old call's messages as its ladder drew them, read while the page holds the
            # capture's lease (the capture keeps an ended call's): the REFER, its 202, the
            # transferee's two NOTIFYs.
            old_lines = await asyncio.to_thread(captured, server, callid)
        results = wait_clean(a, b, c)
    caller, callee, target = results
    assert any(line.startswith("REFER ") for line in old_lines), old_lines
    assert any(line.startswith("SIP/2.0 202") for line in old_lines), old_lines
    assert sum(line.startswith("NOTIFY ") for line in old_lines) == 2, old_lines
    reinvites = received(callee, "INVITE")[1:]
    assert len(reinvites) == 1 and "a=sendonly" in reinvites[0].body, reinvites
    (refer,) = received(callee, "REFER")
    assert destination in (refer.header("Refer-To") or ""), refer.header("Refer-To")
    (c_invite,) = received(target, "INVITE")
    assert c_invite.header("Call-ID") == new_callid and c_invite.ruri == destination
    # The proxy ended the old call on both sides; End ended the new call on both sides.
    assert [m.header("Call-ID") for m in received(caller, "BYE")] == [callid]
    assert [m.header("Call-ID") for m in received(callee, "BYE")] == [callid, new_callid]
    assert [m.header("Call-ID") for m in received(target, "BYE")] == [new_callid]
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-call.png", "2-held.png", "3-ladder.png", "4-transferred.png", "5-ended.png",
        "last.png"]
