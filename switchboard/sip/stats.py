"""The statistics the proxy core keeps, under their OpenSIPS names (`core:`, `tm:`,
`dialog:`, `usrloc:`, `auth:`): the counter names made once, and the report a management
reader gets (`Proxy.statistics`), where what is counted is joined by what is measured from
the tables at that moment.

Counting is a `Counter` add where it happens; nothing here runs per message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .dialog import Dialog, DialogState

# Statistic names by method and by reply class, made once (labels stay bounded: any other
# method counts only in the total).
METHOD_STATS = {m: f"core:rcv_requests_{m.lower()}" for m in (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "REFER", "NOTIFY", "SUBSCRIBE",
    "UPDATE", "INFO", "MESSAGE", "PRACK", "PUBLISH")}
REPLY_STATS = {c: f"core:rcv_replies_{c}xx" for c in range(1, 7)}

# Reported even before anything was counted under them, so a reader sees them as 0.
_ALWAYS = ("dialog:processed_dialogs", "dialog:expired_dialogs",
           "dialog:failed_dialogs", "core:rcv_requests", "core:rcv_replies",
           "core:fwd_requests", "core:fwd_replies", "core:drop_requests",
           "core:drop_replies", "core:err_requests", "core:bad_msg_hdr",
           "tm:UAS_transactions", "tm:UAC_transactions", "tm:retransmissions",
           "core:relay_denied", "core:unknown_dialog_requests", "auth:challenges",
           "auth:failures", "auth:bans", "auth:banned_drops")


def report(counted: Counter[str], dialogs: Iterable[Dialog], transactions: int,
           contacts: int) -> dict[str, int]:
    """What was `counted`, with the dialogs active and early now, the transactions in use
    and the registered contacts."""
    stats = dict(counted)
    active = early = 0
    for d in dialogs:
        if d.state is DialogState.EARLY:
            early += 1
        elif d.state in (DialogState.CONFIRMED, DialogState.CONFIRMED_NA):
            active += 1
    stats["dialog:active_dialogs"] = active
    stats["dialog:early_dialogs"] = early
    stats["tm:inuse_transactions"] = transactions
    stats["usrloc:registered_contacts"] = contacts
    for name in _ALWAYS:
        stats.setdefault(name, 0)
    return stats
