"""The operator console in a real headless browser (Debian's chromium through Playwright) on
a management server with a fake node of 1,000 live calls: the token comes from the URL
fragment, the list is paged, an event brings a new call in and takes an ended one out, and
the page keeps answering; a button sends its operation. Screenshots go to the test's
tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.mi.http import MIServer, start_mi_server
from switchboard.sip.operations import HoldChange
from tests.support.browser_console import console_page
from tests.support.fake_api import FakeApi

TOKEN = "s3cret-console"
CALLS = 1000


def dialog(n: int) -> dict[str, Any]:
    return {
        "ID": f"1.{n:x}", "db_id": (1 << 32) + n, "callid": f"call-{n:04d}@test",
        "state": 4, "from_uri": f"sip:alice{n}@127.0.0.1", "to_uri": f"sip:bob{n}@127.0.0.1",
        "caller_tag": f"a{n}", "caller_contact": "sip:alice@127.0.0.1:5061",
        "caller_sdp": "", "timestart": 1_700_000_000 + n,
        "CALLEES": [{"callee_tag": f"b{n}", "callee_contact": "sip:bob@127.0.0.1:5062",
                     "callee_sdp": ""}],
    }


@pytest.fixture
async def node() -> AsyncIterator[tuple[FakeApi, MIServer]]:
    api = FakeApi([dialog(n) for n in range(CALLS)], {}, uptime=1.0, started_at=0.0)
    mi = await start_mi_server(api, "127.0.0.1", 0, token=TOKEN)
    try:
        yield api, mi
    finally:
        await mi.close()


async def test_a_thousand_calls_render_paged_and_stay_live(
        node: tuple[FakeApi, MIServer], tmp_path: Path) -> None:
    api, mi = node
    base = f"http://127.0.0.1:{mi.port}"
    async with console_page(base, tmp_path / "shots") as page:
        answer = await page.goto(f"/#token={TOKEN}")
        assert answer is not None and answer.status == 200
        policy = (await answer.all_headers())["content-security-policy"]
        assert "default-src 'self'" in policy  # no script from elsewhere, none inline
        await page.wait_for_function(
            "document.getElementById('count').textContent === '1000 live calls'")
        rows = page.locator("#calls .call")
        assert await rows.count() == 50  # one page of rows in the DOM, not a thousand
        assert await page.locator("#page").text_content() == "page 1 of 20 (1000 shown)"
        # The token left the address bar for the session's storage.
        assert "token" not in page.url
        await page.screenshot(path=str(tmp_path / "shots" / "thousand.png"))
        # Still answering: the filter finds one call, the last page has the last calls.
        await page.fill("#filter", "call-0999@test")
        await page.wait_for_function("document.querySelectorAll('#calls .call').length === 1")
        await page.fill("#filter", "")
        for _ in range(19):
            await page.click("#next")
        assert await page.locator("#page").text_content() == "page 20 of 20 (1000 shown)"
        assert await rows.last.get_attribute("data-call-id") == "call-0999@test"
        assert await page.evaluate("1 + 1") == 2
        # An event for a new call brings it in; the end of a call takes it out.
        await page.wait_for_function(
            "document.getElementById('status').textContent === 'live'")
        watching = mi_feed_watching(mi)
        api.dialogs.append(dialog(CALLS))
        deliver(mi, "E_DLG_STATE_CHANGED", {"id": "1.3e8", "callid": "call-1000@test",
                                            "old_state": 3, "new_state": 4})
        await page.wait_for_function(
            "document.getElementById('count').textContent === '1001 live calls'")
        api.dialogs.pop(0)
        deliver(mi, "E_DLG_STATE_CHANGED", {"id": "1.0", "callid": "call-0000@test",
                                            "old_state": 4, "new_state": 5})
        await page.wait_for_function(
            "document.getElementById('count').textContent === '1000 live calls'")
        assert "E_DLG_STATE_CHANGED" in watching
        # A row's button asks the REST API, with the token.
        await page.fill("#filter", "call-0500@test")
        row = page.locator('[data-call-id="call-0500@test"]')
        await row.locator("select.hold-leg").select_option("both")
        await row.locator("button.hold").click()
        await page.wait_for_function(
            "document.querySelector('[data-call-id=\"call-0500@test\"] .op')"
            ".textContent.startsWith('hold: pending')")
        assert [(type(op), op.call_id) for op in api.operated] == [
            (HoldChange, "call-0500@test")]
        # This node keeps no capture in the process: the ladder says so.
        await row.locator("button.ladder-toggle").click()
        await page.wait_for_function(
            "document.querySelector('[data-call-id=\"call-0500@test\"] .ladder')"
            ".textContent.includes('no message capture')")


def mi_feed_watching(mi: MIServer) -> frozenset[str]:
    watching: frozenset[str] = _rest_state(mi).feed.watching()
    return watching


def deliver(mi: MIServer, event: str, params: dict[str, Any]) -> None:
    _rest_state(mi).feed.deliver(event, params)


def _rest_state(mi: MIServer) -> Any:
    from switchboard.rest.routes import _STATE
    return mi._runner.app[_STATE]
