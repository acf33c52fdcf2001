"""The proxy's own user agent client: requests the proxy sends itself rather than relays.
Inside a dialog as one party to the other (BYE, REFER, re-INVITE; RFC 3261 §12.2.1.1), and
the CANCEL of an INVITE branch it relayed (§9.1). Their answers end here: each request
reports its final answer to whoever asked for it, and for an INVITE the proxy is the UAC
and ACKs a 2xx itself (§13.2.2.4).

Owns these client transactions (it is their `TransactionUser`), in the one table of client
transactions the proxy matches responses in. Knows nothing of relaying or of why a request
is sent: the proxy and the call operations above it decide that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from .addressing import Addressing, is_sips
from .addressing import via as our_via
from .dialog import Dialog, Leg
from .errors import ParseError
from .message import Request, Response
from .replication import Replication
from .timers import TimerQueue
from .transaction import (
    ClientKey,
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
    Send,
    TimerSettings,
)
from .uri import SipUri, parse_name_addr
from .wire import Address, Datagram

# RFC 3261 §8.1.1.7: every branch we make starts with the magic cookie.
MAGIC = "z9hG4bK"

# What a request of our own reports when it ends: (status, reason, now).
FinalCallback = Callable[[int, str, float], None]


class _Local:
    """One request of our own: the dialog it belongs to, who hears its final answer, and
    the ACK it needs if it is an INVITE answered 2xx (kept for the 2xx's retransmissions)."""

    __slots__ = ("ack", "dialog", "done", "on_final", "target", "undelivered")

    def __init__(self, dialog: Dialog | None, on_final: FinalCallback | None = None,
                 target: Leg | None = None) -> None:
        self.dialog = dialog
        self.on_final = on_final
        self.target = target
        self.done = False
        self.ack: Datagram | None = None
        self.undelivered = False  # the transport found no way to the target


class Uac:
    def __init__(self, addressing: Addressing, rand: Callable[[], str], send: Send,
                 timers: TimerQueue, settings: TimerSettings,
                 client_txns: dict[ClientKey, ClientTransaction], stats: Counter[str],
                 replication: Replication) -> None:
        self.addressing = addressing
        self.rand = rand
        self._send = send
        self.timers = timers
        self.settings = settings
        self.client_txns = client_txns
        self.stats = stats
        self.replication = replication

    # -- requests inside a dialog (RFC 3261 §12.2.1.1) ------------------------------------

    def request(
        self, dialog: Dialog, target: Leg, peer: Leg, method: str,
        extra: Iterable[tuple[str, str]] = (), body: bytes = b"",
    ) -> tuple[Request, Address, Address] | None:
        """A request toward `target` that looks as if `peer` sent it, with where it goes
        and the socket it leaves from; None when the target cannot be reached from here."""
        to_uri = dialog.from_uri if target is dialog.caller else dialog.to_uri
        from_uri = dialog.to_uri if target is dialog.caller else dialog.from_uri
        # The next number of the peer's sequence as the target sees it (spec §2.4); every
        # later request relayed toward the target is shifted one further.
        target.cseq_offset += 1
        self.replication.changed(dialog)
        cseq = peer.cseq + target.cseq_offset
        uri = remote = target.contact or to_uri
        routes = list(target.route_set)
        headers: list[tuple[str, str, str]] = [
            ("to", "To", f"<{to_uri}>;tag={target.tag}"),
            ("from", "From", f"<{from_uri}>;tag={peer.tag}"),
            ("call-id", "Call-ID", dialog.call_id),
            ("cseq", "CSeq", f"{cseq} {method}"),
            ("max-forwards", "Max-Forwards", "70"),
        ]
        try:
            if routes:
                first = parse_name_addr(routes[0])
                if isinstance(first.uri, SipUri) and not first.uri.has_param("lr"):
                    # Strict-routing next hop (§12.2.1.1): it becomes the Request-URI.
                    routes = [*routes[1:], f"<{uri}>"]
                    uri = str(first.uri)
            headers += [("route", "Route", r) for r in routes]
            for name, value in extra:
                headers.append((name.lower(), name, value))
            req = Request(method, uri, headers, body)
            hop = self.addressing.next_hop(req)
        except ParseError:
            # The route set is a Record-Route kept as the peer wrote it: one we cannot read
            # leaves this leg unreachable from here, not the dialog stuck.
            return None
        dest = self.addressing.resolve(hop) if hop is not None else None
        known = target.address
        if known is not None and known.reliable and (
                dest is None or dest.transport == known.transport):
            # The connection the target last sent over, though its Contact may name another
            # address (RFC 5923 aliasing, as the relay does).
            dest = known
        if dest is None:
            dest = known  # an unresolvable Contact: where the target's messages came from
        if dest is None:
            return None
        if not dest.secure and is_sips(remote):
            return None  # a sips: target is never reached over a hop without TLS (§26.2.2)
        local = self.addressing.local_toward(dest, target.local)
        if local is None:
            return None
        req.prepend_via(self.addressing.via(local, f"{MAGIC}{self.rand()}"))
        return req, dest, local

    def send(self, dialog: Dialog, target: Leg, peer: Leg, method: str,
             headers: Iterable[tuple[str, str]], body: bytes,
             on_final: FinalCallback | None, now: float) -> bool:
        """Send `method` toward `target` as if `peer` sent it; False if it can't go."""
        built = self.request(dialog, target, peer, method, headers, body)
        if built is None:
            return False
        self._start(built[0], built[1], built[2], _Local(dialog, on_final, target), now)
        return True

    def bye(self, dialog: Dialog, extra: list[tuple[str, str]], now: float) -> None:
        """A BYE to each party of a confirmed dialog, as if the other one hung up (to the
        parties we cannot reach, none)."""
        for target, peer in ((dialog.callee, dialog.caller), (dialog.caller, dialog.callee)):
            built = self.request(dialog, target, peer, "BYE", extra)
            if built is not None:
                self._start(built[0], built[1], built[2], _Local(dialog), now)

    # -- the CANCEL of a relayed INVITE (RFC 3261 §9.1) -------------------------------------

    def cancel(self, client: ClientTransaction, now: float) -> None:
        """CANCEL the INVITE of `client`, along the same branch (the caller makes sure a
        provisional response came first)."""
        inv = client.request
        headers = [next(h for h in inv.headers if h[0] == "via")]
        headers += [h for h in inv.headers if h[0] in ("route", "call-id", "from", "to",
                                                        "max-forwards")]
        headers.append(("cseq", "CSeq", f"{inv.cseq.number} CANCEL"))
        cancel = Request("CANCEL", inv.uri, headers)
        self._start(cancel, client.dest, client.local, _Local(None), now)
        # RFC 3261 §9.1: no final response 64*T1 after the CANCEL: the INVITE client
        # transaction is destroyed (as a timeout: 408 upstream if nothing was sent yet).
        self.timers.call_at(now + 64 * self.settings.t1, client.transport_error)

    def _start(self, req: Request, dest: Address, local: Address, owner: _Local,
               now: float) -> None:
        client: ClientTransaction
        if req.method == "INVITE":  # named at the call: see `Proxy._forward`
            client = InviteClientTransaction(req, dest, local, self._send, self.timers,
                                             self.settings, self, owner)
        else:
            client = NonInviteClientTransaction(req, dest, local, self._send, self.timers,
                                                self.settings, self, owner)
        self.client_txns[client.key] = client
        self.stats["tm:UAC_transactions"] += 1
        client.start(now)

    # -- TransactionUser: what our client transactions report --------------------------------

    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None:
        owner = txn.owner
        if not isinstance(owner, _Local):
            return
        status = response.status
        if status < 200:
            return
        if owner.dialog is not None:
            self.replication.changed(owner.dialog)  # a hold's answer sets the leg's hold mask
        if txn.request.method == "INVITE" and status < 300:
            # We are the UAC of this INVITE: the 2xx is ACKed end to end by us (§13.2.2.4),
            # again for each retransmission of the 2xx.
            if owner.ack is None:
                owner.ack = self._ack_for(txn, response)
            self._send(owner.ack)
        if not owner.done:
            owner.done = True
            if owner.on_final is not None:
                owner.on_final(status, response.reason, now)

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, _Local) and not owner.done and owner.on_final is not None:
            owner.done = True
            if owner.undelivered:
                owner.on_final(480, "Temporarily Unavailable", now)
            else:
                owner.on_final(408, "Request Timeout", now)

    def undeliverable(self, txn: ClientTransaction, now: float) -> None:
        """The transport could not send `txn`'s request: it ends now (RFC 3261 §17.1.4),
        reported as 480, the target being unreachable rather than silent."""
        owner = txn.owner
        if isinstance(owner, _Local):
            owner.undelivered = True
        txn.transport_error(now)

    def on_terminated(self, txn: ClientTransaction) -> None:
        if self.client_txns.get(txn.key) is txn:
            del self.client_txns[txn.key]
        txn.owner = None

    def _ack_for(self, txn: ClientTransaction, response: Response) -> Datagram:
        """The ACK of a 2xx to our own INVITE: to the 2xx's Contact, along the route set
        (RFC 3261 §13.2.2.4)."""
        req = txn.request
        headers = [h for h in req.headers
                   if h[0] in ("from", "call-id", "route", "max-forwards")]
        headers.append(("to", "To", response.get("to") or req.get("to") or ""))
        headers.append(("cseq", "CSeq", f"{req.cseq.number} ACK"))
        uri = req.uri
        try:
            contacts = response.contacts
        except ParseError:
            contacts = []
        if contacts and contacts[0].uri is not None:
            uri = str(contacts[0].uri)
        ack = Request("ACK", uri, headers)
        dest = txn.dest
        # Over a connection the ACK follows its INVITE on it (RFC 3261 §18.1.1).
        if not req.has("route") and not dest.reliable:
            hop = self.addressing.next_hop(ack)
            resolved = self.addressing.resolve(hop) if hop is not None else None
            if resolved is not None and resolved.transport == txn.local.transport:
                dest = resolved
        ack.prepend_via(our_via(txn.local, f"{MAGIC}{self.rand()}"))
        return Datagram(ack.to_bytes(), dest, txn.local)
