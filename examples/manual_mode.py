"""Manual-mode routing script: transfers requested in-band, linked by the script itself.

Run with:  switchboard serve --mode manual --script examples/manual_mode.py

- A party of a call sends an in-dialog INFO carrying `X-Transfer-To: <sip:...>`: the script
  blind-transfers the *other* party there (`call_transfer`) and remembers, by that party's
  address, which call it is leaving.
- In manual mode no match parameter rides in the Refer-To, so the script links the new call
  itself: an initial INVITE from that address is tied to the old call (`call_blind_replace`).
- The NOTIFYs of the transfer are answered by the proxy on the script's say-so
  (`call_transfer_notify`), so the party that stays behind never sees them.
"""

from __future__ import annotations

from switchboard.script import RequestContext

# "ip:port" of a transferred party -> Call-ID of the call it is leaving
_leaving: dict[str, str] = {}


def on_request(req: RequestContext) -> None:
    msg = req.request
    if req.method == "INFO" and not req.is_initial:
        target = msg.get("x-transfer-to")
        if target is None:
            return  # an ordinary INFO: relay it
        dialog = req.dialog_id
        if dialog is None:
            req.reply(481)
            return
        # The sender asks for the other party to be moved.
        leg = "callee" if req.sender_leg == "caller" else "caller"
        if req.call_transfer(leg, target.strip()) == 1:
            _leaving[req.party_address(leg)] = req.call_id
            req.reply(200)
        else:
            req.reply(488, "Transfer Refused")
        return
    if req.method == "NOTIFY" and not req.is_initial:
        if req.call_transfer_notify() == 0:
            return  # answered by the proxy; routing stops here
        return
    if req.method == "INVITE" and req.is_initial:
        old = _leaving.pop(f"{req.source.host}:{req.source.port}", None)
        if old is not None:
            req.call_blind_replace(old)

