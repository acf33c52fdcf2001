"""The operator console driven in a real headless browser (Debian's chromium through
Playwright) against `switchboard serve` with a SIPp call (A -> switchboard -> B, scenarios in
tests/interop/scenarios/console/): the call appears in the page; its Hold button puts the
callee on hold (B answers the re-INVITE, which offers no media back); its transfer form sends
B a REFER for the destination typed (B declines it, and the page says so); the ladder shows
the call's messages from the node's capture; End sends the BYEs and the call leaves the page.
Screenshots of each step are saved under the test's tmp_path.

The browser stays on loopback without a network namespace of its own (which would have to hold
switchboard and SIPp too): see tests/support/browser_console.py.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from tests.support.browser_console import console_page
from tests.support.ports import free_port
from tests.support.server import StartServer, wait_confirmed
from tests.support.sipp import StartSipp, killed_on_failure, received, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).resolve().parent / "scenarios" / "console"


async def test_console_holds_transfers_and_ends_a_sipp_call(
        sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path) -> None:
    server = switchboard_server()
    b_port, a_port = free_port("udp"), free_port("udp")
    b = sipp("b", SCENARIOS / "uas_held.xml", local_port=b_port, timeout=90).wait_listening()
    prefix = f"sb-console-{secrets.token_hex(4)}-"
    callid = f"{prefix}1@127.0.0.1"
    shots = tmp_path / "shots"
    a = sipp("a", SCENARIOS / "uac_ended.xml", remote=f"{server.host}:{server.udp_port}",
             local_port=a_port, timeout=90, keys={"uas_port": b_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    with killed_on_failure(a, b):
        async with console_page(f"http://127.0.0.1:{server.mi_port}", shots) as page:
            await page.goto("/")
            await asyncio.to_thread(wait_confirmed, server, callid)
            row = page.locator(f'[data-call-id="{callid}"]')
            await row.wait_for()
            assert await row.get_attribute("data-state") == "confirmed"
            await page.screenshot(path=str(shots / "1-call.png"), full_page=True)

            await row.locator("select.hold-leg").select_option("callee")
            await row.locator("button.hold").click()
            await page.wait_for_function(
                f"document.querySelector('[data-call-id=\"{callid}\"]')"
                "?.dataset.hold !== 'none'", timeout=20000)
            # The callee's leg is shown on hold (the caller answered the proxy's re-INVITE
            # with a=inactive too, so the caller may show held as well).
            assert await row.locator("tr.leg.callee td").nth(4).text_content() == "yes"
            await page.screenshot(path=str(shots / "2-held.png"), full_page=True)

            destination = f"sip:carol@127.0.0.1:{free_port('udp')}"
            await row.locator("select.transfer-leg").select_option("callee")
            await row.locator("input.destination").fill(destination)
            await row.locator("button.transfer").click()
            await page.wait_for_function(
                f"document.querySelector('[data-call-id=\"{callid}\"] .op')?."
                "textContent.startsWith('transfer fail 603')", timeout=20000)
            await page.screenshot(path=str(shots / "3-transfer.png"), full_page=True)

            await row.locator("button.ladder-toggle").click()
            ladder = row.locator(".ladder svg text.label")
            await ladder.filter(has_text="REFER").first.wait_for()
            labels = await ladder.all_text_contents()
            assert labels[0].startswith("INVITE ") and "BYE" not in " ".join(labels)
            assert any(label.startswith("SIP/2.0 603") for label in labels), labels
            await page.screenshot(path=str(shots / "4-ladder.png"), full_page=True)

            await row.locator("button.end").click()
            await row.wait_for(state="detached", timeout=20000)
            await page.screenshot(path=str(shots / "5-ended.png"), full_page=True)
        results = wait_clean(a, b)
    callee = results[1]
    reinvites = received(callee, "INVITE")[1:]
    assert len(reinvites) == 1 and "a=sendonly" in reinvites[0].body, reinvites
    (refer,) = received(callee, "REFER")
    assert destination in (refer.header("Refer-To") or ""), refer.header("Refer-To")
    assert len(received(callee, "BYE")) == 1 and len(received(results[0], "BYE")) == 1
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-call.png", "2-held.png", "3-transfer.png", "4-ladder.png", "5-ended.png",
        "last.png"]
