"""SIPp callers and callees talking through `switchboard serve`.

Every test runs a UAS scenario (the callee, listening on a free port) and a UAC scenario (the
caller) whose remote address is the proxy and whose Request-URI names the callee
(`-key uas_port N`), so the proxy must route by Request-URI, record-route itself and carry the
in-dialog requests along the route set. The scenarios live in scenarios/ and pin every message.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import pytest

from tests.support.ports import free_port
from tests.support.server import SwitchboardServer
from tests.support.sipp import Sipp, StartSipp, killed_on_failure, wait_clean

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

Transport = Literal["udp", "tcp"]


def _start_pair(
    sipp: StartSipp,
    server: SwitchboardServer,
    uas_scenario: str,
    uac_scenario: str,
    *,
    calls: int,
    rate: float | None = None,
    transport: Transport = "udp",
    trace_msg: bool = True,
    uac_args: tuple[str, ...] = (),
) -> tuple[Sipp, Sipp]:
    """Start the callee, wait until it listens, then start the caller aimed at the proxy."""
    uas_port = free_port(transport)
    uas = sipp(
        "uas",
        uas_scenario,
        local_port=uas_port,
        transport=transport,
        calls=calls,
        trace_msg=trace_msg,
    ).wait_listening()
    proxy_port = server.udp_port if transport == "udp" else server.tcp_port
    uac = sipp(
        "uac",
        uac_scenario,
        remote=f"{server.host}:{proxy_port}",
        local_port=free_port(transport),
        transport=transport,
        calls=calls,
        rate=rate,
        keys={"uas_port": uas_port},
        trace_msg=trace_msg,
        extra_args=uac_args,
    )
    return uas, uac


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_500_calls(sipp: StartSipp, switchboard: SwitchboardServer, transport: Transport) -> None:
    """500 basic calls (INVITE/180/200/ACK/BYE/200) at 50 calls/s, all clean on both sides."""
    calls = 500
    uas, uac = _start_pair(
        sipp,
        switchboard,
        "uas.xml",
        "uac.xml",
        calls=calls,
        rate=50,
        transport=transport,
        trace_msg=False,
    )
    wait_clean(uac, uas, calls=calls)


def test_cancel_ringing_call(sipp: StartSipp, switchboard: SwitchboardServer) -> None:
    """The caller cancels after 180: 200 for the CANCEL and 487 for the INVITE reach the
    caller, the callee gets the CANCEL and the ACK for its 487."""
    calls = 5
    uas, uac = _start_pair(sipp, switchboard, "uas_ring.xml", "uac_cancel.xml", calls=calls, rate=5)
    wait_clean(uac, uas, calls=calls)


def test_busy_is_relayed(sipp: StartSipp, switchboard: SwitchboardServer) -> None:
    """A 486 from the callee reaches the caller, and both sides see their ACK."""
    calls = 5
    uas, uac = _start_pair(sipp, switchboard, "uas_busy.xml", "uac_busy.xml", calls=calls, rate=5)
    wait_clean(uac, uas, calls=calls)


def _dialog_state_confirmed(dialog: dict[str, Any]) -> bool:
    """Whether a dialog:list entry is past its 2xx (OpenSIPS numbers 3 = confirmed without
    ACK, 4 = confirmed; names are accepted too). No state field: assume it is."""
    state = dialog.get("state")
    if state is None:
        return True
    if isinstance(state, int):
        return state >= 3
    return "confirm" in str(state).lower() or "established" in str(state).lower()


def _wait_for_dialog(server: SwitchboardServer, call_id_prefix: str, timeout: float = 10.0) -> str:
    """Poll dialog:list until a confirmed dialog whose callid starts with the prefix shows."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = server.mi_result("dialog:list")
        dialogs = last.get("Dialogs", []) if isinstance(last, dict) else []
        for dialog in dialogs:
            callid = str(dialog.get("callid", ""))
            if callid.startswith(call_id_prefix) and _dialog_state_confirmed(dialog):
                return callid
        time.sleep(0.1)
    raise AssertionError(
        f"no confirmed dialog with a Call-ID starting {call_id_prefix!r} in dialog:list "
        f"after {timeout} s; last answer: {last!r}"
    )


def test_mi_end_dlg_sends_bye_to_both_sides(
    sipp: StartSipp, switchboard: SwitchboardServer
) -> None:
    """dialog:end_dlg with the Call-ID ends an established call: both sides get a BYE."""
    prefix = f"sb-end-dlg-{secrets.token_hex(4)}-"
    uas, uac = _start_pair(
        sipp,
        switchboard,
        "uas_wait_bye.xml",
        "uac_wait_bye.xml",
        calls=1,
        # SIPp expands %u (call number) and %s (local IP) in -cid_str.
        uac_args=("-cid_str", prefix + "%u@%s"),
    )
    with killed_on_failure(uac, uas):
        callid = _wait_for_dialog(switchboard, prefix)
        reply = switchboard.mi("dialog:end_dlg", dialog_id=callid)
        assert "error" not in reply, f"dialog:end_dlg failed: {reply!r}"
    wait_clean(uac, uas)
