"""The record-routing, transaction-stateful proxy core (RFC 3261 §16), sans-IO.

Bytes come in through `receive(data, source, local, now)`; what must be sent collects in
`outbox` as `Datagram`s, dialog state changes in `events`. The driver runs `timers`
(`next_deadline()`, `run_due(now)`). The core owns the transaction tables, the dialog table and
the location service of one worker.

This module relays: it validates a request, preprocesses its Route, hears the layers above,
applies the policy, determines the target and forwards (`_route_request`), then brings the
answers back. Beside it: who may do what (`policy`), where things go (`addressing`), the
requests the proxy sends itself (`uac`), dialog replication (`replication`) and the
statistics' names (`stats`).

Decisions worth knowing:
- One branch per request (no forking): a registered AOR is retargeted to its most preferred,
  most recent contact.
- Loop detection hashes the fields of RFC 3261 §16.6 step 8 into our branch.
- Record-Route is doubled when a request changes transport or socket (RFC 5658).
- Hostnames other than IP literals are resolved only through the static `hosts` table; the core
  never blocks on DNS.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .addressing import SIG_PARAM, Addressing, is_sips, signature_of
from .addressing import target as target_key
from .addressing import via as our_via
from .auth import Verdict
from .dialog import Dialog, DialogState, DialogStateChanged, DialogTable, Leg, Lifetimes
from .errors import ParseError
from .events import CallEvent
from .guard import AuthFailed, GuardSettings
from .memo import remember
from .message import Request, Response, build_response, parse_message
from .policy import Policy
from .registrar import Binding, Location, aor_key
from .replication import Replication
from .stats import METHOD_STATS, REPLY_STATS, report
from .timers import Timer, TimerQueue
from .transaction import (
    ClientKey,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerKey,
    ServerTransaction,
    State,
    TimerSettings,
    client_key,
    response_address,
    server_key,
)
from .uac import MAGIC, Uac
from .uac import FinalCallback as FinalCallback
from .uri import SipUri, parse_uri
from .wire import Address, Datagram

ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, SUBSCRIBE, UPDATE, INFO, "
    "MESSAGE, PRACK"
)
# Where each read is one whole message, so no Content-Length is needed: a datagram, and a
# WebSocket frame (RFC 7118 §5.1).
WHOLE_MESSAGES = frozenset(("udp", "ws", "wss"))
# Peer addresses kept once each (`Proxy._peer`); past this many the table starts again.
PEERS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listeners: tuple[Address, ...]
    domains: tuple[str, ...] = ()
    record_route: bool = True
    dialog_lifetime: float = 43200.0
    worker_id: int = 0
    timers: TimerSettings = field(default_factory=TimerSettings)
    # Keep a deleted dialog this long so late retransmissions and ACKs still match it.
    deleted_linger: float = 32.0
    hosts: tuple[tuple[str, str], ...] = (("localhost", "127.0.0.1"),)
    callops_mode: str = "param"
    match_param: str = "osid"
    end_old_call: bool = True
    # No open relay (issue 6): a new request is relayed only toward a served domain or a
    # registered user, or when it comes from a trusted network or a registered user.
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    retry_after: int = 2  # seconds, in the 503 that sheds new calls under overload
    # Requests per second (and burst) one untrusted source may send; more are dropped
    # unanswered, as a flood deserves. 0 turns the limit off.
    rate_limit: float = 200.0
    rate_burst: float = 400.0
    # Digest authentication (off without users): REGISTER always (401), and new requests
    # from untrusted sources of the methods in `auth_methods` ("*": all but ACK and CANCEL;
    # `auth_invites` false takes INVITE out) with 407.
    auth_realm: str = ""
    auth_users: tuple[tuple[str, str], ...] = ()
    auth_invites: bool = True
    auth_methods: tuple[str, ...] = ("*",)
    auth_algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    auth_nonce_ttl: float = 300.0
    auth_guard: GuardSettings = field(default_factory=GuardSettings)
    # The key our Record-Route entries are signed with, so an in-dialog request from an
    # untrusted source is relayed only along a route we wrote ("" = random at start; set it
    # so that a restarted proxy, or a sibling, still accepts the routes of live calls).
    route_secret: str = ""


Event = DialogStateChanged | CallEvent

# What a routing script decided about a request (`request_hook`).
RELAY = "relay"
REPLIED = "replied"
DROPPED = "dropped"
# How a layer above answers a request it took over: reply(status, reason).
Reply = Callable[[int, str], None]


class NewCallLink(Protocol):
    """A new call linked to a call it transfers (by the call operations above): told of the
    new call's final answer, `local` when the proxy gave it itself."""

    def answered(self, status: int, reason: str, local: bool, now: float) -> None: ...


class CallHooks(Protocol):
    """Where the call operations (`callops.CallOps`, the layer above) see the proxy's
    traffic. The proxy calls these and knows nothing else of them."""

    def on_initial_invite(self, req: Request) -> list[NewCallLink]:
        """Links of a new INVITE to the calls it transfers (may rewrite its Request-URI)."""
        ...

    def on_in_dialog_request(self, req: Request, dialog: Dialog, sender: Leg, reply: Reply,
                             now: float) -> bool:
        """True when the request was answered here and goes no further."""
        ...


class _NoCallOps:
    """The plain proxy: no call operations above it."""

    def on_initial_invite(self, req: Request) -> list[NewCallLink]:
        return []

    def on_in_dialog_request(self, req: Request, dialog: Dialog, sender: Leg, reply: Reply,
                             now: float) -> bool:
        return False


# The routing script's hook, bound by the layer above (`routing.install_script`): called once
# per new request after Route processing; answers what it decided and the links it made.
RequestHook = Callable[[Request, ServerTransaction, Address, float],
                       tuple[str, list[NewCallLink]]]


class _Forward:
    """One relayed request: its server transaction, its client branch, its dialog."""

    __slots__ = ("cancel_sent", "cancelled", "client", "cseq_delta", "dialog", "final_sent",
                 "initial", "links", "own_rr", "server", "timer_c", "timer_c_due",
                 "undelivered")

    def __init__(self, server: ServerTransaction, dialog: Dialog | None, initial: bool) -> None:
        self.server = server
        self.dialog = dialog
        self.initial = initial  # the dialog-creating INVITE
        self.client: ClientTransaction | None = None
        self.final_sent = False
        self.cancelled = False
        self.cancel_sent = False
        self.own_rr = 0
        self.timer_c: Timer | None = None
        self.timer_c_due = 0.0
        self.cseq_delta = 0  # CSeq shift applied toward the receiving leg (callops)
        self.links: list[NewCallLink] = []  # calls this new call transfers
        self.undelivered = False  # the transport found no way to the next hop


class Proxy:
    def __init__(self, config: ProxyConfig, rand: Callable[[], str], first_seq: int = 0) -> None:
        if not config.listeners:
            raise ValueError("the proxy needs at least one listener")
        self.config = config
        self.rand = rand
        self.timers = TimerQueue()
        self.outbox: list[Datagram] = []
        self.events: list[Event] = []
        self.dialogs = DialogTable(config.worker_id, first_seq)
        self.location = Location()
        self.server_txns: dict[ServerKey, ServerTransaction] = {}
        self.client_txns: dict[ClientKey, ClientTransaction] = {}
        self.stats: Counter[str] = Counter()
        self._send = self.outbox.append
        self.addressing = Addressing(config.listeners, config.domains, config.hosts)
        # Set by the driver when it cannot keep up: this share of new INVITEs is refused
        # early with 503 (RFC 3261 §21.5.4) so calls already up keep their share of the CPU.
        self.shed_fraction = 0.0
        # The To tag of those 503s, sent statelessly (§8.2.7): the same for every request,
        # so that their ACKs are known for ours and end here, unparsed. Made at the first one.
        self.shed_tag = ""
        self._shed_ack = b""
        # Set by the driver when it drains before stopping: every new INVITE gets the 503.
        self.draining = False
        realm = config.auth_realm or (config.domains[0] if config.domains
                                      else config.listeners[0].host)
        self.policy = Policy(
            trusted=config.trusted, rate=config.rate_limit, burst=config.rate_burst,
            route_secret=config.route_secret, rand=rand, auth_realm=realm,
            auth_users=config.auth_users, auth_methods=config.auth_methods,
            auth_invites=config.auth_invites, auth_algorithms=config.auth_algorithms,
            auth_nonce_ttl=config.auth_nonce_ttl, auth_guard=config.auth_guard)
        self.auth = self.policy.auth
        self.guard = self.policy.guard
        # Failed authentications since the driver last looked (it logs them).
        self.security: list[AuthFailed] = []
        # The call operations above, once one attaches itself (`callops.CallOps`).
        self.callops: CallHooks = _NoCallOps()
        # The routing script's hook (`routing.install_script`); None is the plain proxy.
        self.request_hook: RequestHook | None = None
        self.replication = Replication(self.dialogs, self.addressing)
        # The requests of our own (BYE, CANCEL, REFER, re-INVITE), in the same client
        # transaction table: their answers are matched like any other.
        self.uac = Uac(self.addressing, rand, self._send, self.timers, config.timers,
                       self.client_txns, self.stats, self.replication)
        # Dialog id -> its initial INVITE's context, from the INVITE until the 2xx is ACKed
        # (or the INVITE fails): what CANCEL, end_dialog and the ACK need of it.
        self._invites: dict[str, _Forward] = {}
        self.dialogs.on_remove.append(self._forget_invite)
        self._lifetimes = Lifetimes(self.timers, self._dialog_expired)
        self._peers: dict[Address, Address] = {}
        # Made once: every server transaction is told of its end through it.
        self._on_server_end = self._server_terminated

    def _forget_invite(self, dialog: Dialog) -> None:
        self._invites.pop(dialog.id, None)

    def random_fraction(self) -> float:
        """A number in [0, 1) from the injected randomness (glare back-off)."""
        return zlib.crc32(self.rand().encode()) / 2**32

    # -- driver interface ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timers(self, now: float) -> None:
        self.timers.run_due(now)

    def receive(self, data: bytes, source: Address, local: Address, now: float) -> None:
        guard = self.guard
        if guard is not None and guard.banned_until and guard.is_banned(source.host, now):
            self.stats["auth:banned_drops"] += 1  # a banned guesser learns nothing, not even "no"
            return
        shed_ack = self._shed_ack
        if shed_ack and data.startswith(b"ACK ") and shed_ack in data:
            return  # the ACK of a 503 sent at the door: a stateless UAS ignores it (§8.2.7)
        try:
            msg = parse_message(data, datagram=source.transport in WHOLE_MESSAGES)
        except ParseError as exc:
            self.stats["core:bad_msg_hdr"] += 1
            self._answer_unparsable(data, exc, source, local)
            return
        try:
            stats = self.stats
            if isinstance(msg, Request):
                if self.config.rate_limit and not self.policy.allowed(source.host, now):
                    stats["core:rate_limited"] += 1
                    return
                stats["core:rcv_requests"] += 1
                method_stat = METHOD_STATS.get(msg.method)
                if method_stat is not None:
                    stats[method_stat] += 1
                self._on_request(msg, source, local, now)
            else:
                stats["core:rcv_replies"] += 1
                stats[REPLY_STATS.get(msg.status // 100, "core:rcv_replies_other")] += 1
                self._on_response(msg, now)
        except ParseError as exc:
            if isinstance(msg, Request):
                self.stats["core:err_requests"] += 1
                if msg.method != "ACK":
                    self._reply_stateless(msg, exc.status, exc.reason, source, local)
            else:
                self.stats["core:drop_replies"] += 1

    # -- requests --------------------------------------------------------------------------

    def _on_request(self, req: Request, source: Address, local: Address, now: float) -> None:
        method = req.method
        # Mandatory headers (RFC 3261 §8.2, §16.3 step 1), parsed now so errors answer 400.
        # A new request opens a dialog that keeps From and To whole; in a dialog only their
        # tags are used, and what a proxy does not use it must leave alone (§16.3 step 1).
        _ = req.call_id
        if req.to_tag is None:
            _ = req.from_, req.to
        else:
            _ = req.from_tag
        cseq = req.cseq
        if cseq.method != method:
            raise ParseError("CSeq method does not match the request method")
        self._stamp_via(req, source)
        if method == "ACK":
            self._on_ack(req, source, local, now)
            return
        key = server_key(req)
        txn = self.server_txns.get(key)
        if txn is not None:
            self.stats["tm:retransmissions"] += 1
            txn.receive_request(req, now)
            return
        if method == "CANCEL":
            self._on_cancel(req, key, source, local, now)
            return
        if (method == "INVITE" and self.shed_fraction and req.to_tag is None
                and self.random_fraction() < self.shed_fraction
                and req.get("replaces") is None and req.get("referred-by") is None):
            self._shed(req, source, local)
            return
        txn = self._new_server_txn(req, source, local, now)
        try:
            self._route_request(req, txn, source, local, now)
        except ParseError as exc:
            # Answer through the transaction: a retransmission gets this answer (not the
            # 100), and the transaction's timers end it.
            self.stats["core:err_requests"] += 1
            self._respond(txn, exc.status, now, reason=exc.reason)

    def _route_request(self, req: Request, txn: ServerTransaction, source: Address,
                       local: Address, now: float) -> None:
        """RFC 3261 §16 for a request no transaction of ours matched, step by step:
        validation (§16.3), Route preprocessing (§16.4), the layers above, the policy, the
        target (§16.5), forwarding (§16.6). A step that answers the request (or drops it)
        says so, and the request goes no further."""
        if self._invalid(req, txn, now):
            return
        signature = self.addressing.preprocess_routes(req)
        trusted = self.policy.is_trusted(source.host)
        if (req.to_tag is not None and not trusted
                and self._refused_in_dialog(req, txn, signature, now)):
            return
        links = self._ask_above(req, txn, source, now)
        if links is None:
            return
        # The Route and the To tag are read after the routing script: it may change them.
        routed = bool(req.values("route"))
        vouched_for = trusted
        if req.to_tag is None:
            admitted = self._admit(req, txn, source, trusted, routed, now)
            if admitted is None:
                return
            vouched_for = admitted
        self._determine_target(req, txn, source, local, routed, vouched_for, links, now)

    def _invalid(self, req: Request, txn: ServerTransaction, now: float) -> bool:
        """§16.3 request validation (steps 3 to 5; the syntax was checked on arrival):
        answers, and says True, when Max-Forwards ran out, the request loops or it needs
        an extension we lack."""
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            if req.method == "OPTIONS" and self.addressing.is_own(req.sip_ruri):
                self._answer_options(txn, now)
            else:
                self._respond(txn, 483, now)
            return True
        # Loops are looked for on requests outside a dialog (§16.3 step 4 is optional): an
        # in-dialog request follows its route set, and Max-Forwards still bounds it.
        if req.to_tag is None and self._looped(req):
            self._respond(txn, 482, now)
            return True
        if req.get("proxy-require"):
            self._respond(txn, 420, now, extra=[("Unsupported", req.get("proxy-require") or "")])
            return True
        return False

    def _refused_in_dialog(self, req: Request, txn: ServerTransaction, signature: str,
                           now: float) -> bool:
        """An in-dialog request from an untrusted source: refused (True) unless it belongs
        to a dialog we track or comes along a route we signed (`_in_dialog_refusal`)."""
        refused = self._in_dialog_refusal(req, signature)
        if not refused:
            return False
        # A forged To tag, or a real dialog's identity aimed at somebody else than its other
        # party, must not be a way around authentication and the relay policy.
        self.stats["core:unknown_dialog_requests"] += 1
        self._respond(txn, refused, now)
        return True

    def _ask_above(self, req: Request, txn: ServerTransaction, source: Address,
                   now: float) -> list[NewCallLink] | None:
        """The layers above: the call operations see a new INVITE (and link it to the calls
        it transfers), then the routing script decides. The links made, or None when the
        script answered or dropped the request."""
        links = (self.callops.on_initial_invite(req)
                 if req.method == "INVITE" and req.to_tag is None else [])
        if links:
            # Linked already: an answer of our own (404, 503 ...) must fail the transfer too.
            placeholder = _Forward(txn, None, False)
            placeholder.links = links
            txn.owner = placeholder
        if self.request_hook is None:
            return links
        action, script_links = self.request_hook(req, txn, source, now)
        if action == DROPPED:
            self._server_terminated(txn)
            return None
        if action == REPLIED:
            return None
        links.extend(script_links)
        if links and txn.owner is None:
            placeholder = _Forward(txn, None, False)
            placeholder.links = links
            txn.owner = placeholder
        return links

    def _admit(self, req: Request, txn: ServerTransaction, source: Address, trusted: bool,
               routed: bool, now: float) -> bool | None:
        """The policy for a new request: overload shedding, authentication (§22.3) and, for
        a request with a preloaded Route, relaying. None when refused here (answered or
        dropped); else whether its source may relay anywhere, being trusted or having just
        authenticated."""
        method = req.method
        if method == "INVITE" and (self.draining or (
                self.shed_fraction and self.random_fraction() < self.shed_fraction)):
            self.stats["core:shed_requests"] += 1
            self._respond(txn, 503, now, extra=[("Retry-After", str(self.config.retry_after))])
            return None
        vouched_for = trusted
        if (self.auth is not None and not trusted
                and self.policy.challenged(method, req, self.addressing.is_own)):
            verdict = self.auth.check(req.get("proxy-authorization"), method, req.uri, now)
            if verdict.user is None:
                self._challenge(txn, verdict, 407, "Proxy-Authenticate", source, method, now)
                return None
            vouched_for = True
            req.remove("proxy-authorization")  # our own credentials end here (§22.3)
        if routed and not vouched_for and not self._registered_caller(req, source, now):
            # A preloaded Route toward somebody else is relaying all the same.
            self.stats["core:relay_denied"] += 1
            self._respond(txn, 403, now, reason="Relaying Denied")
            return None
        return vouched_for

    def _determine_target(self, req: Request, txn: ServerTransaction, source: Address,
                          local: Address, routed: bool, vouched_for: bool,
                          links: list[NewCallLink], now: float) -> None:
        """§16.5: the Route's next hop when there is one; else a REGISTER for our domain
        goes to the registrar, a registered user to the contact of theirs the Request-URI
        names (or their first), a Request-URI of ours with nobody behind it is answered
        here, and another domain is reached if the relay policy allows. Then relays."""
        binding: Binding | None = None
        if not routed:
            method = req.method
            new = req.to_tag is None
            ruri = req.sip_ruri
            if method == "REGISTER" and self.addressing.serves_domain(ruri):
                self._register(req, txn, source, local, now)
                return
            # Registered users are found wherever the Request-URI points, so a UA that
            # names our domain without our port (`sip:bob@127.0.0.1`) still reaches them.
            bindings = self.location.lookup(aor_key(ruri), now) if ruri.user else []
            if bindings:
                # A Request-URI naming one registered contact (a dialog's remote target) stays
                # on it; an in-dialog request is never moved to another of the user's devices.
                target = str(ruri)
                binding = next((b for b in bindings if b.contact == target), None)
                if binding is None and (new or self.addressing.is_own(ruri)):
                    binding = bindings[0]
            if binding is not None:
                if is_sips(req.uri) and not is_sips(binding.contact):
                    # RFC 5630 §5.3: a sips: AOR is retargeted to sips: contacts only.
                    self._refuse_insecure(txn, local, now)
                    return
                req.uri = binding.contact
            elif ruri.user and self.location.unreachable(aor_key(ruri), now):
                # Registered, but over connections that are gone (RFC 5626 §5.3): the user
                # is offline, not unknown (RFC 3261 §21.4.18).
                self._respond(txn, 480, now, reason="Temporarily Unavailable")
                return
            elif self.addressing.is_own(ruri):
                if method == "OPTIONS":
                    self._answer_options(txn, now)
                else:
                    self._respond(txn, 404, now, reason="Not Found")
                return
            elif new and not vouched_for and not self._may_relay(req, ruri, source, now):
                self.stats["core:relay_denied"] += 1
                self._respond(txn, 403, now, reason="Relaying Denied")
                return
        self._relay(req, txn, source, local, links, binding.source if binding else None, now)

    def _relay(self, req: Request, txn: ServerTransaction, source: Address, local: Address,
               links: list[NewCallLink], via_binding: Address | None, now: float) -> None:
        """Forwarding (§16.6) with the dialog the request makes or belongs to: a new INVITE
        makes one; an in-dialog request moves its dialog on (unless the call operations
        above answer it) and is shifted by the CSeq offset of the leg it goes to."""
        dialog: Dialog | None = None
        initial = False
        cseq_delta = 0
        facing: Address | None = None  # our socket that faces the receiving party
        if req.to_tag is None:
            if req.method == "INVITE":
                dialog = Dialog.from_invite(self.dialogs.new_id(), req, self._peer(source),
                                            local, now)
                self.dialogs.add(dialog)
                self.stats["dialog:processed_dialogs"] += 1
                initial = True
        else:
            dialog = self.dialogs.by_call_id(req.call_id)
            if dialog is not None:
                legs = dialog.leg_of(req.from_tag)
                if legs is None:
                    dialog = None
                else:
                    sender, receiver = legs
                    self.replication.changed(dialog)
                    if self.callops.on_in_dialog_request(
                        req, dialog, sender,
                        lambda status, reason: self._respond(txn, status, now, reason), now,
                    ):
                        sender.cseq = max(sender.cseq, req.cseq.number)
                        return
                    was_active = dialog.active
                    dialog.on_request(req, sender, self.events.append)
                    cseq_delta = receiver.cseq_offset
                    facing = receiver.local
                    if via_binding is None:
                        via_binding = self._known_connection(receiver)
                    if was_active and not dialog.active:
                        self._dialog_ended(dialog, now)
        ctx = _Forward(txn, dialog, initial)
        ctx.cseq_delta = cseq_delta
        ctx.links = links
        txn.owner = ctx
        if initial and dialog is not None:
            self._invites[dialog.id] = ctx
        self._forward(req, ctx, local, now, via_binding, facing)

    @staticmethod
    def _known_connection(leg: Leg) -> Address | None:
        """The connection a dialog's party last sent over, if it came over one: requests
        toward it go back that way even when its Contact names another address (behind a
        NAT, or a Contact that differs from its Via), as RFC 5923 aliasing does for the
        sent-by."""
        address = leg.address
        return address if address is not None and address.transport != "udp" else None

    @staticmethod
    def _insecure_hop(req: Request, dest: Address) -> bool:
        """A `sips:` Request-URI must be reached over TLS on every hop (RFC 3261 §26.2.2)."""
        return not dest.secure and is_sips(req.uri)

    def _refuse_insecure(self, txn: ServerTransaction, local: Address, now: float) -> None:
        """480 with Warning 380 for a `sips:` request that could only go on without TLS
        (RFC 5630 §5.3). Not 416: that says the scheme is unknown here, and `sips:` is not;
        only this destination cannot be reached securely."""
        self._respond(txn, 480, now, extra=[
            ("Warning", f'380 {local.hostport} "SIPS Not Allowed"')])

    def _forward(self, req: Request, ctx: _Forward, local_in: Address, now: float,
                 via_binding: Address | None, facing: Address | None) -> None:
        out = req.copy()
        mf = req.max_forwards
        out.set("max-forwards", str(mf - 1) if mf is not None else "70")
        if ctx.cseq_delta:
            out.set("cseq", f"{req.cseq.number + ctx.cseq_delta} {req.method}")
        next_hop = self.addressing.next_hop(out)
        dest = self.addressing.resolve(next_hop) if next_hop is not None else None
        if dest is None and via_binding is not None:
            dest = via_binding
        elif (via_binding is not None and dest is not None
              and via_binding.transport == dest.transport and via_binding.reliable):
            dest = via_binding  # reuse the registered connection (RFC 5626 spirit)
        if dest is None:
            self._respond(ctx.server, 503, now, reason="Unresolvable destination")
            self._fail_initial(ctx, now)
            return
        if self._insecure_hop(req, dest):
            self._refuse_insecure(ctx.server, local_in, now)
            self._fail_initial(ctx, now)
            return
        dest = self._peer(dest)  # the client transaction's, and the callee leg's later
        local_out = self.addressing.local_toward(dest, facing)
        if local_out is None:
            self._respond(ctx.server, 503, now, reason="No socket for transport")
            self._fail_initial(ctx, now)
            return
        if self.config.record_route and req.to_tag is None and req.method != "REGISTER":
            # RFC 5658: two entries when the request changes socket, so each side sees the
            # address it can reach; the downstream-facing one on top.
            # The callee's route set: requests along it go to the caller's Contact. A trusted
            # next hop needs no signature to come back through us.
            signature = "" if self.policy.is_trusted(dest.host) else self.policy.sign(
                req.call_id, req.from_tag or "", self._contact_target(req))
            sips = is_sips(req.uri)
            if local_out != local_in:
                out.prepend("record-route",
                           f"<{self.addressing.record_route(local_in, signature, sips)}>")
                ctx.own_rr += 1
            out.prepend("record-route",
                       f"<{self.addressing.record_route(local_out, signature, sips)}>")
            ctx.own_rr += 1
        out.prepend_via(self.addressing.via(local_out, self._branch(req)))
        # Each class named at its call, not through a `cls` variable: mypyc then builds the
        # native object directly instead of through Python's generic type call.
        client: ClientTransaction
        if out.method == "INVITE":
            client = InviteClientTransaction(out, dest, local_out, self._send, self.timers,
                                             self.config.timers, self, ctx)
        else:
            client = NonInviteClientTransaction(out, dest, local_out, self._send, self.timers,
                                                self.config.timers, self, ctx)
        ctx.client = client
        self.client_txns[client.key] = client
        self.stats["tm:UAC_transactions"] += 1
        self.stats["core:fwd_requests"] += 1
        client.start(now)
        if out.method == "INVITE":
            ctx.timer_c = self.timers.call_at(now + self.config.timers.timer_c,
                                              lambda t: self._timer_c(ctx, t))

    def _on_ack(self, req: Request, source: Address, local: Address, now: float) -> None:
        txn = self.server_txns.get(server_key(req))
        if txn is not None and txn.state is not State.ACCEPTED:
            txn.receive_request(req, now)  # ACK of a non-2xx final: hop by hop, ends here
            return
        # In Accepted, an ACK matching the INVITE is a 2xx ACK: relay it (RFC 6026 §8.7).
        dialog = self.dialogs.by_call_id(req.call_id)
        cseq_delta = 0
        signature = self.addressing.preprocess_routes(req)
        if not self.policy.is_trusted(source.host) and self._in_dialog_refusal(req, signature):
            self.stats["core:unknown_dialog_requests"] += 1  # an ACK gets no answer
            return
        known: Address | None = None
        facing: Address | None = None
        if dialog is not None:
            legs = dialog.leg_of(req.from_tag)
            if legs is not None:
                dialog.on_request(req, legs[0], self.events.append)
                cseq_delta = legs[1].cseq_offset
                known = self._known_connection(legs[1])
                facing = legs[1].local
                self.replication.changed(dialog)
                invite = self._invites.get(dialog.id)
                if invite is not None and invite.final_sent:
                    # The ACK of the initial 2xx: both INVITE transactions may end soon.
                    del self._invites[dialog.id]
                    server = invite.server
                    server.settle(now)
                    if invite.client is not None:
                        # One wait for the pair: the client ends with the server (see
                        # `_server_terminated`), unless the server's is over already.
                        invite.client.settle(now, wait=server.state is not State.ACCEPTED)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self.stats["core:drop_requests"] += 1  # §16.3 step 3; an ACK gets no 483
            return
        out = req.copy()
        out.set("max-forwards", str(mf - 1) if mf is not None else "70")
        if cseq_delta:
            out.set("cseq", f"{req.cseq.number + cseq_delta} ACK")
        next_hop = self.addressing.next_hop(out)
        if next_hop is None or (not out.values("route") and self.addressing.is_own(next_hop)):
            self.stats["core:drop_requests"] += 1
            return
        dest = self.addressing.resolve(next_hop)
        if known is not None and (dest is None or dest.transport == known.transport):
            dest = known
        local_out = self.addressing.local_toward(dest, facing) if dest is not None else None
        if dest is None or local_out is None or self._insecure_hop(req, dest):
            self.stats["core:drop_requests"] += 1  # an ACK gets no answer
            return
        # Stateless relay (§16.11): a deterministic branch, so a retransmitted ACK reuses it.
        top_branch = (req.top_via.branch or "").encode("utf-8", "surrogateescape")
        branch = f"{MAGIC}sl{zlib.crc32(top_branch):08x}"
        out.prepend_via(our_via(local_out, branch))
        self.stats["core:fwd_requests"] += 1
        self._send(Datagram(out.to_bytes(), dest, local_out))

    def _on_cancel(self, req: Request, key: ServerKey, source: Address, local: Address,
                   now: float) -> None:
        invite_txn = self.server_txns.get((key[0], key[1], key[2], "INVITE"))
        txn = self._new_server_txn(req, source, local, now)
        if invite_txn is None:
            self._respond(txn, 481, now)
            return
        self._respond(txn, 200, now)
        ctx = invite_txn.owner
        if isinstance(ctx, _Forward) and not ctx.final_sent:
            self._cancel_branch(ctx, now)

    def _cancel_branch(self, ctx: _Forward, now: float) -> None:
        ctx.cancelled = True
        client = ctx.client
        if client is None:
            # Nothing was sent downstream: answer 487 ourselves (§16.10).
            self._respond(ctx.server, 487, now)
            self._fail_initial(ctx, now)
            return
        # A CANCEL may only follow a provisional response (RFC 3261 §9.1); until one
        # arrives it waits, and `_on_branch_response` sends it.
        if client.state is State.PROCEEDING and not ctx.cancel_sent:
            ctx.cancel_sent = True
            self.uac.cancel(client, now)

    def _new_server_txn(self, req: Request, source: Address, local: Address,
                        now: float) -> ServerTransaction:
        txn: ServerTransaction
        if req.method == "INVITE":  # named at the call, as for client transactions
            txn = InviteServerTransaction(req, source, local, self._send, self.timers,
                                          self.config.timers, self._on_server_end)
        else:
            txn = NonInviteServerTransaction(req, source, local, self._send, self.timers,
                                             self.config.timers, self._on_server_end)
        txn.reply_to = self._peer(txn.reply_to)
        self.server_txns[txn.key] = txn
        self.stats["tm:UAS_transactions"] += 1
        if req.method == "INVITE":
            # Quench the upstream's retransmissions at once (RFC 3261 §16.2 / §17.2.1).
            txn.respond(build_response(req, 100), now)
        return txn

    def _peer(self, address: Address) -> Address:
        """One `Address` object per peer for what is kept (a dialog's legs, a transaction's
        reply address): the transport makes one per datagram, and every held call would
        otherwise keep its own copy of the same few."""
        known = self._peers.get(address)
        if known is None:
            known = remember(self._peers, address, address, PEERS_KEPT)
        return known

    def _server_terminated(self, txn: ServerTransaction) -> None:
        owner = txn.owner
        if isinstance(owner, _Forward) and isinstance(owner.client, InviteClientTransaction):
            owner.client.end_settled()  # its wait was the server's (`_on_ack`)
        txns = self.server_txns
        if txns.get(txn.key) is txn:
            del txns[txn.key]
            if not txns:
                txns.clear()  # a dict does not shrink as entries go: its table goes now
        txn.owner = None

    # -- responses -------------------------------------------------------------------------

    def _on_response(self, resp: Response, now: float) -> None:
        client = self.client_txns.get(client_key(resp.top_branch, resp.cseq.method))
        if client is None:
            self._forward_response_statelessly(resp)
            return
        client.receive_response(resp, now)

    # TransactionUser: what the client transactions of relayed requests report (those of
    # our own requests report to `uac`).
    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None:
        ctx = txn.owner
        if not isinstance(ctx, _Forward):
            return
        status = response.status
        dialog = ctx.dialog
        if dialog is not None:
            self.replication.changed(dialog)
            if ctx.initial:
                was_active = dialog.active
                old_state = dialog.state
                dialog.on_invite_response(response, ctx.own_rr, txn.dest, txn.local,
                                          self.events.append)
                answered = dialog.state is DialogState.CONFIRMED_NA
                if answered and old_state < DialogState.CONFIRMED_NA:
                    self._arm_lifetime(dialog, now)
                if was_active and not dialog.active:
                    self.stats["dialog:failed_dialogs"] += 1
                    self._dialog_ended(dialog, now)
            else:
                legs = dialog.leg_of(txn.request.from_tag)
                if legs is not None:
                    dialog.on_response_to(txn.request.method, response, legs[1])
        if status < 200:
            if ctx.cancelled and not ctx.cancel_sent:
                # Any provisional, 100 included, allows the CANCEL (RFC 3261 §9.1).
                ctx.cancel_sent = True
                self.uac.cancel(txn, now)
            if status == 100:
                return  # hop by hop: we sent our own
            # §16.7 step 2: 101-199 restart timer C (applied lazily when it fires).
            ctx.timer_c_due = now + self.config.timers.timer_c
        out = response.copy()
        out.pop_first_value("via")
        if (ctx.own_rr and 100 < status < 300
                and not self.policy.is_trusted(ctx.server.reply_to.host)):
            self._resign_record_route(out, response)
        if ctx.cseq_delta:
            out.set("cseq", f"{response.cseq.number - ctx.cseq_delta} {response.cseq.method}")
        first_final = False
        if status >= 200:
            if ctx.final_sent and status >= 300:
                return
            if not ctx.final_sent:
                first_final = True
                ctx.final_sent = True
                self.stats[f"tm:{status // 100}xx_transactions"] += 1
                if ctx.timer_c is not None:
                    ctx.timer_c.cancel()
                    ctx.timer_c = None
                if dialog is not None and ctx.initial and status >= 300:
                    # After a 2xx the context stays until the ACK comes through (`_on_ack`
                    # settles its transactions then).
                    self._invites.pop(dialog.id, None)
        self.stats["core:fwd_replies"] += 1
        ctx.server.respond(out, now)
        if first_final and ctx.links:
            self._tell_links(ctx, status, response.reason, False, now)

    def on_timeout(self, txn: ClientTransaction, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, _Forward) and not owner.final_sent:
            # A request the transport could not deliver is answered at once, and not as a
            # timeout: 480 says the callee is not reachable now (see `undeliverable`).
            self._respond(owner.server, 480 if owner.undelivered else 408, now)
            self._fail_initial(owner, now)

    def on_terminated(self, txn: ClientTransaction) -> None:
        txns = self.client_txns
        if txns.get(txn.key) is txn:
            del txns[txn.key]
            if not txns:
                txns.clear()  # its table goes (see `_server_terminated`)
        txn.owner = None  # the context refers back to the transaction: break the cycle

    def _timer_c(self, ctx: _Forward, now: float) -> None:
        if ctx.final_sent:
            return
        if ctx.timer_c_due > now:  # restarted by a provisional since it was armed
            ctx.timer_c = self.timers.call_at(ctx.timer_c_due, lambda t: self._timer_c(ctx, t))
            return
        client = ctx.client
        if client is not None and client.state is State.PROCEEDING and not ctx.cancel_sent:
            ctx.cancel_sent = True
            self.uac.cancel(client, now)
        self._respond(ctx.server, 408, now)
        self._fail_initial(ctx, now)

    def _forward_response_statelessly(self, resp: Response) -> None:
        vias = resp.vias
        top = vias[0]
        own = self.addressing.own
        if (top.host.strip("[]").lower(), top.port or 5060) not in own or len(vias) < 2:
            self.stats["core:drop_replies"] += 1
            return
        nxt = vias[1]
        # The next hop as an address: `received` is one; a host name is not looked up.
        host = self.addressing.resolve_host(nxt.params.get("received") or nxt.host)
        rport = nxt.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (nxt.port or 5060)
        dest = Address(nxt.transport.lower(), host or "", port)
        local = self.addressing.local_for(dest) if host is not None and 0 < port < 65536 else None
        if local is None:
            self.stats["core:drop_replies"] += 1
            return
        out = resp.copy()
        out.pop_first_value("via")
        if (100 < resp.status < 300 and resp.has("record-route")
                and not self.policy.is_trusted(dest.host)):
            self._resign_record_route(out, resp)  # as the first one went up statefully
        self.stats["core:fwd_replies"] += 1
        self._send(Datagram(out.to_bytes(), dest, local))

    # -- dialogs ------------------------------------------------------------------------------

    def _arm_lifetime(self, dialog: Dialog, now: float) -> None:
        self._lifetimes.arm(dialog, now + self.config.dialog_lifetime)

    def _rearm_lifetime(self, dialog: Dialog, now: float) -> None:
        """A restored dialog's lifetime timer, at the time it had left (at once if none)."""
        if dialog.timeout_at is None:
            self._arm_lifetime(dialog, now)
            return
        self._lifetimes.arm(dialog, max(dialog.timeout_at, now))

    def _dialog_expired(self, dialog: Dialog, now: float) -> None:
        if dialog.active:
            self.stats["dialog:expired_dialogs"] += 1
            self.end_dialog(dialog.id, now, reason="timeout")

    def _dialog_ended(self, dialog: Dialog, now: float) -> None:
        self.replication.changed(dialog)
        self._lifetimes.disarm(dialog)
        self.timers.call_at(now + self.config.deleted_linger,
                            lambda _t: self.dialogs.remove(dialog))

    # -- replication: snapshots out, restored dialogs in (`replication.Replication`) -------

    def track_changes(self) -> None:
        """Start remembering changed dialogs for `take_dirty` (a runtime that replicates
        them calls this once; without it nothing is collected)."""
        self.replication.track_changes()

    def take_dirty(self, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(snapshots, dropped): a `Dialog.snapshot` of every confirmed dialog that changed
        since the last call, and the ids of dialogs replicated before that have ended since
        (a copy kept elsewhere can go). A dialog that ends before it is confirmed, or before
        any snapshot of it went out, is in neither."""
        return self.replication.take_dirty(now)

    def restore_dialog(self, snapshot: dict[str, Any], now: float,
                       elapsed: float = 0.0) -> Dialog | None:
        """Bring back a dialog from its `snapshot`, taken `elapsed` seconds ago: in the
        table again (same id, Call-ID, legs, CSeq shifts, hold state), its lifetime timer
        armed for what it had left (an overdue one ends it at the next timer run, with a
        BYE each way). In-dialog requests and call operations then work on it as before.

        Raises no event (subscribers saw its states before): the restored dialog is
        returned, or None when it is not confirmed or its id or Call-ID is here already.
        Raises ValueError for a snapshot that does not parse or names another worker."""
        dialog = self.replication.restore(snapshot, now, elapsed)
        if dialog is not None:
            self._rearm_lifetime(dialog, now)
            self.stats["dialog:restored_dialogs"] += 1
        return dialog

    def _fail_initial(self, ctx: _Forward, now: float) -> None:
        dialog = ctx.dialog
        ctx.final_sent = True
        if ctx.timer_c is not None:
            ctx.timer_c.cancel()
        if dialog is not None and ctx.initial and dialog.active:
            self._invites.pop(dialog.id, None)
            dialog.delete("failed", self.events.append)
            self.stats["dialog:failed_dialogs"] += 1
            self._dialog_ended(dialog, now)

    def end_dialog(self, key: str, now: float, extra_headers: Iterable[tuple[str, str]] = (),
                   reason: str = "terminated") -> bool:
        """End a call from the proxy side: CANCEL if not answered yet, else BYE both ways."""
        dialog = self.dialogs.find(key)
        if dialog is None or not dialog.active:
            return False
        extra = list(extra_headers)
        if dialog.state in (DialogState.UNCONFIRMED, DialogState.EARLY):
            ctx = self._invites.get(dialog.id)
            if ctx is not None and not ctx.final_sent:
                self._cancel_branch(ctx, now)
                return True
            return False
        self.uac.bye(dialog, extra, now)
        dialog.delete(reason, self.events.append)
        self._dialog_ended(dialog, now)
        return True

    # -- requests of our own inside a dialog (`uac.Uac`) -----------------------------------

    def in_dialog_request(
        self, dialog: Dialog, target: Leg, peer: Leg, method: str,
        extra: Iterable[tuple[str, str]] = (), body: bytes = b"",
    ) -> tuple[Request, Address, Address] | None:
        """A request toward `target` that looks as if `peer` sent it (RFC 3261 §12.2.1.1)."""
        return self.uac.request(dialog, target, peer, method, extra, body)

    def send_in_dialog(self, dialog: Dialog, target: Leg, peer: Leg, method: str,
                       headers: Iterable[tuple[str, str]], body: bytes,
                       on_final: FinalCallback | None, now: float) -> bool:
        """Originate `method` toward `target` as if `peer` sent it; False if it can't go."""
        return self.uac.send(dialog, target, peer, method, headers, body, on_final, now)

    def undeliverable(self, datagram: Datagram, now: float) -> None:
        """The driver had no way to send `datagram`: no connection to a WebSocket client any
        more (a server does not connect to one, RFC 7118 §5), no socket, or a TCP or TLS
        connection that did not open (refused, handshake failed, timed out). The client
        transaction that sent it fails now with a transport error (RFC 3261 §17.1.4)
        rather than at its timeout: 480 upstream for a relayed request, 480 to whoever
        asked for a request of our own.

        480 rather than RFC 5626's 430 (Flow Failed): 430 is the edge proxy telling the
        registrar behind it to try another of the user's flows; here the two are one, and
        what the caller needs to hear is that the callee cannot be reached now. A response
        that cannot be sent has nowhere else to go (its connection is gone) and is left to
        its transaction's timers, as is an ACK (it has no transaction)."""
        data = datagram.data
        if data.startswith(b"SIP/"):
            return
        try:
            msg = parse_message(data)
        except ParseError:
            return
        if not isinstance(msg, Request) or msg.method == "ACK":
            return
        txn = self.client_txns.get(client_key(msg.top_branch, msg.method))
        if txn is None:
            return
        self.stats["core:undeliverable_requests"] += 1
        owner = txn.owner
        if isinstance(owner, _Forward):
            owner.undelivered = True
            txn.transport_error(now)
        else:
            self.uac.undeliverable(txn, now)

    def statistics(self) -> dict[str, int]:
        return report(self.stats, self.dialogs, len(self.server_txns) + len(self.client_txns),
                      len(self.location))

    # -- local answers -------------------------------------------------------------------------

    def respond(self, txn: ServerTransaction, status: int, now: float, reason: str | None = None,
                extra: Iterable[tuple[str, str]] = ()) -> None:
        """Answer a request through its server transaction (the script's `reply`)."""
        self._respond(txn, status, now, reason, extra)

    def _respond(self, txn: ServerTransaction, status: int, now: float, reason: str | None = None,
                 extra: Iterable[tuple[str, str]] = ()) -> None:
        if txn.to_tag is None:
            txn.to_tag = self.rand()
        resp = build_response(txn.request, status, reason, to_tag=txn.to_tag, extra=extra)
        txn.respond(resp, now)
        ctx = txn.owner
        if status >= 200 and isinstance(ctx, _Forward) and ctx.links:
            self._tell_links(ctx, status, resp.reason, True, now)

    @staticmethod
    def _tell_links(ctx: _Forward, status: int, reason: str, local: bool, now: float) -> None:
        """The final answer to a new call that transfers others went upstream."""
        links, ctx.links = ctx.links, []
        for link in links:
            link.answered(status, reason, local, now)

    def _answer_options(self, txn: ServerTransaction, now: float) -> None:
        self._respond(txn, 200, now, extra=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                            ("Supported", "")])

    def _register(self, req: Request, txn: ServerTransaction, source: Address, local: Address,
                  now: float) -> None:
        to_uri = req.to.uri
        if not isinstance(to_uri, SipUri):
            self._respond(txn, 416, now)
            self.stats["registrar:rejected_regs"] += 1
            return
        if self.auth is not None:
            verdict = self.auth.check(req.get("authorization"), "REGISTER", req.uri, now)
            if verdict.user is None:
                self._challenge(txn, verdict, 401, "WWW-Authenticate", source, "REGISTER", now)
                return
            if verdict.user != to_uri.user:
                # Authenticated, but as somebody else than the address being registered.
                self.stats["registrar:rejected_regs"] += 1
                self._respond(txn, 403, now)
                return
        if txn.to_tag is None:
            txn.to_tag = self.rand()
        try:
            resp = self.location.register(req, aor_key(to_uri), source, local, now, txn.to_tag)
        except ParseError as exc:
            self.stats["registrar:rejected_regs"] += 1
            self._respond(txn, exc.status, now, reason=exc.reason)
            return
        self.stats["registrar:accepted_regs" if resp.status == 200 else
                   "registrar:rejected_regs"] += 1
        txn.respond(resp, now)

    def _shed(self, req: Request, source: Address, local: Address) -> None:
        """Refuse a new call at the door, before any transaction or dialog is made: the
        503 goes out statelessly (§8.2.7), so a refusal costs a small part of a call. A lost
        503 brings the INVITE again, and it is looked at anew. A new call that another call
        refers to (Replaces, Referred-By) goes on: its transfer must learn what became of it."""
        self.stats["core:shed_requests"] += 1
        if not self.shed_tag:
            self.shed_tag = "shed" + self.rand()
            self._shed_ack = f";tag={self.shed_tag}".encode()
        self._reply_stateless(req, 503, None, source, local, to_tag=self.shed_tag,
                              extra=[("Retry-After", str(self.config.retry_after))])

    def _reply_stateless(self, req: Request, status: int, reason: str | None, source: Address,
                         local: Address, *, to_tag: str = "",
                         extra: Iterable[tuple[str, str]] = ()) -> None:
        try:
            resp = build_response(req, status, reason, to_tag=to_tag or self.rand(),
                                  extra=extra)
            dest = response_address(req, source)
            self._send(Datagram(resp.to_bytes(), dest, local))
        except ParseError:
            self.stats["core:drop_requests"] += 1

    def _answer_unparsable(self, data: bytes, exc: ParseError, source: Address,
                           local: Address) -> None:
        """Answer a broken request if enough of it parses to address a response."""
        try:
            msg = parse_message(data, check_body=False)
        except ParseError:
            return
        if isinstance(msg, Request) and msg.method != "ACK":
            self._reply_stateless(msg, exc.status, exc.reason, source, local)

    # -- routing helpers -------------------------------------------------------------------------

    def _stamp_via(self, req: Request, source: Address) -> None:
        """RFC 3261 §18.2.1 `received`, RFC 3581 `rport`."""
        via = req.top_via
        changed = False
        if via.host.strip("[]") != source.host:
            via.params["received"] = source.host
            changed = True
        if "rport" in via.params and not via.params["rport"]:
            via.params["rport"] = str(source.port)
            changed = True
        if changed:
            vias = req.vias
            req.pop_first_value("via")
            req.prepend("via", str(via))
            req._cache["via"] = vias  # the same parsed values, first one updated

    def _may_relay(self, req: Request, ruri: SipUri, source: Address, now: float) -> bool:
        """A new request toward a domain we do not serve: only for trusted sources and
        for registered users calling out from where they registered."""
        if self.addressing.serves_domain(ruri) or self.policy.is_trusted(source.host):
            return True
        return self._registered_caller(req, source, now)

    def _registered_caller(self, req: Request, source: Address, now: float) -> bool:
        """The From user is registered here, from the address this request comes from."""
        from_uri = req.from_.uri
        if isinstance(from_uri, SipUri) and from_uri.user:
            bindings = self.location.lookup(aor_key(from_uri), now)
            return any(b.source.host == source.host for b in bindings)
        return False

    # -- who may do what: authentication, bans, our own signed routes ------------------------

    def _challenge(self, txn: ServerTransaction, verdict: Verdict, status: int, header: str,
                   source: Address, method: str, now: float) -> None:
        """Answer missing or wrong credentials: count a wrong guess (and drop the request
        when that bans its source), else challenge with every algorithm we offer."""
        assert self.auth is not None
        if verdict.failed and self.guard is not None:
            self.stats["auth:failures"] += 1
            banned = self.guard.failed(source.host, verdict.claimed, now,
                                       may_ban=not self.policy.is_trusted(source.host))
            self.security.append(AuthFailed(source.host, verdict.claimed, method, banned))
            if banned:
                self.stats["auth:bans"] += 1
                self._server_terminated(txn)
                return
        self.stats["auth:challenges"] += 1
        self._respond(txn, status, now, extra=[
            (header, value) for value in self.auth.challenges(now, verdict.stale)])

    def _in_dialog_refusal(self, req: Request, signature: str) -> int:
        """0 when an in-dialog request from an untrusted source may be relayed, else the
        status to refuse it with. In a dialog we track (its Call-ID and both tags) it must
        go to the other party's remote target (403 otherwise: a party of a real call may
        not send "in" it to a premium number). Outside one, our own route must be on it,
        signed for this dialog and this target (481 otherwise, RFC 3261 §12.2.2)."""
        dialog = self.dialogs.by_call_id(req.call_id)
        if dialog is not None:
            legs = dialog.leg_of(req.from_tag)
            if legs is not None and legs[1].tag in (None, req.to_tag):
                receiver = legs[1].contact
                if not receiver or target_key(req.ruri) == target_key(parse_uri(receiver)):
                    return 0
                return 403
        return 0 if self.policy.signed_for(req, signature) else 481

    def _contact_target(self, msg: Request | Response) -> str:
        try:
            contacts = msg.contacts
        except ParseError:
            return ""
        return target_key(contacts[0].uri) if contacts and contacts[0].uri is not None else ""

    def _resign_record_route(self, out: Response, response: Response) -> None:
        """§16.7 step 4 lets a proxy rewrite its own Record-Route in a response: the
        caller's route set (from the 2xx) is signed for the callee's Contact, the target of
        the caller's in-dialog requests. `out` is the copy of `response` that goes upstream
        (`response` has its Contact parsed already, for the dialog)."""
        values = out.values("record-route")
        signature = ""
        changed = []
        for value in values:
            unsigned = signature_of(value)[0]
            if self.addressing.own_route(unsigned):
                if not signature:
                    signature = self.policy.sign(response.call_id, response.from_tag or "",
                                                 self._contact_target(response))
                value = f"{unsigned[:-1]};{SIG_PARAM}{signature}>" if unsigned.endswith(
                    ">") else f"{unsigned};{SIG_PARAM}{signature}"
            changed.append(value)
        if signature:
            out.set("record-route", ", ".join(changed))

    def _looped(self, req: Request) -> bool:
        """§16.3 step 4: our Via with the branch hash this request would get again."""
        mine = None
        for via in req.vias:
            if (via.host.strip("[]").lower(), via.port or 5060) in self.addressing.own:
                if mine is None:
                    mine = self._loop_hash(req)
                branch = via.branch or ""
                if branch.startswith(MAGIC + mine):
                    return True
        return False

    def _loop_hash(self, req: Request) -> str:
        key = "|".join((req.uri, req.from_tag or "", req.to_tag or "", req.call_id,
                        str(req.cseq.number), req.get("proxy-require") or ""))
        return f"{zlib.crc32(key.encode('utf-8', 'surrogateescape')):08x}"

    def _branch(self, req: Request) -> str:
        return f"{MAGIC}{self._loop_hash(req)}.{self.rand()}"
