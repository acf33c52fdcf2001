"""RFC 3261 §17 transactions, with the RFC 6026 "Accepted" states, for a stateful proxy.

Four machines: INVITE/non-INVITE by server/client. Each is driven by three inputs — a message
from the peer, a message from its user (the proxy core), a timer firing — and produces two
outputs — datagrams (through the `send` callable it is given) and calls on its user
(`TransactionUser`). Time is always an argument; timers are armed in a `TimerQueue` the driver
runs. Transport reliability decides which timers exist (§17.1.1.2, §17.1.2.2, §17.2.1,
§17.2.2); a timer that is zero on a reliable transport fires at once.

Each machine moves only through its table in `states.py`: an input its state does not expect
raises `LocalProtocolError`, and a stray one the RFC says to absorb (a retransmission, a late
answer) is absorbed because the table says so.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .message import Request, Response
from .states import INVITE_CLIENT, INVITE_SERVER, NON_INVITE_CLIENT, NON_INVITE_SERVER, transition

# The machines' states and inputs (RFC 3261 §17 names), whose transitions are the tables in
# `states.py`. Imported under these names, not assigned: compiled code reaches an imported
# class directly, an alias through the module's dict.
from .states import TransactionEvent as Event
from .states import TransactionState as State
from .timers import Timer, TimerQueue
from .wire import Address, Datagram, address

__all__ = [
    "SPENT", "ClientKey", "ClientTransaction", "Event", "InviteClientTransaction",
    "InviteServerTransaction", "NonInviteClientTransaction", "NonInviteServerTransaction",
    "Send", "ServerKey", "ServerTransaction", "State", "TimerSettings", "TransactionUser",
    "client_key", "response_address", "server_key",
]

Send = Callable[[Datagram], None]


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 §17.1.1.1 values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Timer C (§16.6 step 11): a proxy gives up on an INVITE branch after this long.
    timer_c: float = 180.0


class TransactionUser(Protocol):
    """What a client transaction reports to its owner (the proxy core)."""

    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None: ...

    def on_timeout(self, txn: ClientTransaction, now: float) -> None: ...

    def on_terminated(self, txn: ClientTransaction) -> None: ...


ServerKey = tuple[str, str, int | None, str]
ClientKey = tuple[str, str]


def server_key(request: Request) -> ServerKey:
    """RFC 3261 §17.2.3: branch, sent-by and method (ACK matches the INVITE)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    host, port = via.sent_by
    # The host is one of a few peers': one string for them all while a transaction keeps it.
    return (via.branch or "", sys.intern(host), port, method)


def client_key(branch: str, method: str) -> ClientKey:
    return (branch, "INVITE" if method == "ACK" else method)


# The request a transaction keeps once it only absorbs copies (answered, or settled): an
# empty one, shared and never changed. What the absorbing needs is the key, the addresses
# and the last response; the request's headers and body would wait out the timers for
# nothing (32 s of them per request at the end of a call).
SPENT = Request("INVITE", "", [])

# A transaction runs at most two timers at once (RFC 3261 §17): one that retransmits
# (A, E, G) and one that ends something — the timeout (B, F, H) or, after it is disarmed,
# the wait that absorbs stray copies (D, I, J, K, L, M). Two slots instead of a dict per
# transaction: thousands of finished ones wait out their timers at high call rates.
_RETRANSMIT_TIMERS = frozenset("AEG")


class _Base:
    __slots__ = ("_ender", "_retransmitter", "local", "request", "send", "settings", "state",
                 "timers")

    state: State

    def __init__(
        self,
        request: Request,
        local: Address,
        send: Send,
        timers: TimerQueue,
        settings: TimerSettings,
    ) -> None:
        self.request = request
        self.local = local
        self.send = send
        self.timers = timers
        self.settings = settings
        self._retransmitter: Timer | None = None
        self._ender: Timer | None = None

    def _next(self, event: Event) -> State:
        """The state `event` moves this machine to, from its table (`states.py`); raises
        LocalProtocolError when the table has no such move."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Entered Terminated: stop the timers and tell the owner."""
        raise NotImplementedError

    def settle(self, now: float, wait: bool = True) -> None:
        """The 2xx was acknowledged end to end: no copy of the INVITE or of the 2xx is still
        coming but one already on its way. Wait T4 for those instead of 64*T1 (Timer L on
        the server side, M on the client side: the same end slot), as Kamailio's wait timer
        does; a later 2xx copy is relayed statelessly by its Via (RFC 3261 §16.11). Only
        INVITE transactions are ever Accepted (RFC 6026); thousands fewer transactions are
        held at high call rates.

        What is left to do is absorb INVITE copies and pass 2xx copies on, which needs the
        key and the addresses but not the request: it is let go here (`SPENT` stands in),
        so the settled transactions of the calls just set up cost little.

        With `wait` false it arms no timer of its own and its owner ends it when the other
        side's wait is over (`InviteClientTransaction.end_settled`): one timer per call."""
        old = self.state
        self.state = self._next(Event.SETTLE)
        if old is State.ACCEPTED:
            self.request = SPENT
            if wait:
                self._arm("L", self.settings.t4, now, self._accepted_over)
            else:
                self._disarm("L")

    def _accepted_over(self, now: float) -> None:
        """Timer L (server) or M (client): the Accepted wait is over."""
        raise NotImplementedError

    def _arm(self, name: str, delay: float, now: float, fn: Callable[[float], None]) -> None:
        timer = self.timers.call_at(now + delay, fn)
        if name in _RETRANSMIT_TIMERS:
            old, self._retransmitter = self._retransmitter, timer
        else:
            old, self._ender = self._ender, timer
        if old is not None:
            old.cancel()

    def _disarm(self, *names: str) -> None:
        for name in names:
            if name in _RETRANSMIT_TIMERS:
                timer, self._retransmitter = self._retransmitter, None
            else:
                timer, self._ender = self._ender, None
            if timer is not None:
                timer.cancel()

    def _disarm_all(self) -> None:
        self._disarm("A", "B")  # a name for each slot: the retransmitter and the ender


def _response_event(status: int) -> Event:
    if status < 200:
        return Event.PROVISIONAL
    return Event.SUCCESS if status < 300 else Event.FAILURE


class ServerTransaction(_Base):
    """Common part of the server machines: remembers and resends the last response."""

    __slots__ = ("key", "last_response", "on_terminated", "owner", "reply_to", "to_tag")

    def __init__(
        self,
        request: Request,
        source: Address,
        local: Address,
        send: Send,
        timers: TimerQueue,
        settings: TimerSettings,
        on_terminated: Callable[[ServerTransaction], None],
    ) -> None:
        super().__init__(request, local, send, timers, settings)
        self.key = server_key(request)
        self.reply_to = response_address(request, source)
        self.last_response: bytes | None = None
        self.on_terminated = on_terminated
        self.to_tag: str | None = None  # the tag of a locally generated answer, if any
        self.owner: object = None  # the proxy's forwarding context for this request
        self._begin()

    def _begin(self) -> None:
        self.state = State.TRYING

    @property
    def reliable(self) -> bool:
        return self.reply_to.reliable

    def _transmit(self, data: bytes) -> None:
        self.last_response = data
        self.send(Datagram(data, self.reply_to, self.local))

    def _resend(self) -> None:
        if self.last_response:
            self.send(Datagram(self.last_response, self.reply_to, self.local))

    def _finish(self) -> None:
        self._disarm_all()
        self.on_terminated(self)

    def receive_request(self, request: Request, now: float) -> None:
        raise NotImplementedError

    def respond(self, response: Response, now: float) -> None:
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    """§17.2.1 with RFC 6026 §7.1: 2xx moves to Accepted, which absorbs INVITE copies."""

    __slots__ = ("_g_interval",)

    def _begin(self) -> None:
        self.state = State.PROCEEDING
        self._g_interval = self.settings.t1

    def _next(self, event: Event) -> State:
        return transition("INVITE server transaction", INVITE_SERVER, self.state, event)

    def receive_request(self, request: Request, now: float) -> None:
        old = self.state
        if request.method == "ACK":
            self.state = self._next(Event.ACK)
            if old is State.COMPLETED:
                self._disarm("G", "H")
                if self.reliable:
                    self._timer_i(now)  # timer I is zero on a reliable transport
                else:
                    self._arm("I", self.settings.t4, now, self._timer_i)
            return
        self.state = self._next(Event.REQUEST)
        # A retransmitted INVITE: resend the latest response (§17.2.1); absorbed otherwise.
        if old is State.PROCEEDING or old is State.COMPLETED:
            self._resend()

    def respond(self, response: Response, now: float) -> None:
        old = self.state
        event = _response_event(response.status)
        new = self.state = self._next(event)
        if old is State.PROCEEDING:
            self._transmit(response.to_bytes())
            if new is State.PROCEEDING:
                return
            # From here on only retransmissions are absorbed: let go of the request
            # (thousands of finished transactions wait out their timers at high call rates).
            self.request = SPENT
            if new is State.ACCEPTED:
                # Accepted absorbs INVITE copies without answering them: the 2xx we sent is
                # never resent by us (its retransmissions come from downstream).
                self.last_response = None
                self._arm("L", 64 * self.settings.t1, now, self._accepted_over)
                return
            if not self.reliable:
                self._arm("G", self._g_interval, now, self._timer_g)
            self._arm("H", 64 * self.settings.t1, now, self._timer_h)
        elif old is State.ACCEPTED and event is Event.SUCCESS:
            # 2xx retransmissions from downstream pass straight through (RFC 6026 §7.1).
            self.send(Datagram(response.to_bytes(), self.reply_to, self.local))

    def _timer_g(self, now: float) -> None:
        self.state = self._next(Event.TIMER_G)
        if self.last_response:
            self.send(Datagram(self.last_response, self.reply_to, self.local))
            self._g_interval = min(2 * self._g_interval, self.settings.t2)
            self._arm("G", self._g_interval, now, self._timer_g)

    def _timer_h(self, now: float) -> None:
        # No ACK ever came; RFC 3261 §17.2.1 informs the TU — nothing else to undo here.
        self.state = self._next(Event.TIMER_H)
        self._finish()

    def _timer_i(self, now: float) -> None:
        self.state = self._next(Event.TIMER_I)
        self._finish()

    def _accepted_over(self, now: float) -> None:
        self.state = self._next(Event.TIMER_L)
        self._finish()


class NonInviteServerTransaction(ServerTransaction):
    """§17.2.2."""

    __slots__ = ()

    def _next(self, event: Event) -> State:
        return transition("non-INVITE server transaction", NON_INVITE_SERVER, self.state,
                          event)

    def receive_request(self, request: Request, now: float) -> None:
        old = self.state
        self.state = self._next(Event.REQUEST)
        if old is State.PROCEEDING or old is State.COMPLETED:
            self._resend()

    def respond(self, response: Response, now: float) -> None:
        old = self.state
        new = self.state = self._next(_response_event(response.status))
        if old is State.COMPLETED or old is State.TERMINATED:
            return  # absorbed (the table says why)
        self._transmit(response.to_bytes())
        if new is State.PROCEEDING:
            return
        self.request = SPENT
        if self.reliable:
            self._timer_j(now)  # timer J is zero on a reliable transport
        else:
            self._arm("J", 64 * self.settings.t1, now, self._timer_j)

    def _timer_j(self, now: float) -> None:
        self.state = self._next(Event.TIMER_J)
        self._finish()


class ClientTransaction(_Base):
    __slots__ = ("branch", "data", "dest", "key", "last_status", "owner", "user")

    def __init__(
        self,
        request: Request,
        dest: Address,
        local: Address,
        send: Send,
        timers: TimerQueue,
        settings: TimerSettings,
        user: TransactionUser,
        owner: object = None,
    ) -> None:
        super().__init__(request, local, send, timers, settings)
        self.dest = dest
        self.user = user
        self.owner = owner  # whatever the user wants to find again from the transaction
        self.branch = request.top_via.branch or ""
        self.key = client_key(self.branch, request.method)
        self.data = request.to_bytes()
        self.last_status = 0

    @property
    def reliable(self) -> bool:
        return self.dest.reliable

    def start(self, now: float) -> None:
        raise NotImplementedError

    def receive_response(self, response: Response, now: float) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        self._disarm_all()
        self.user.on_terminated(self)

    def _transmit(self) -> None:
        self.send(Datagram(self.data, self.dest, self.local))

    def transport_error(self, now: float) -> None:
        """The transport could not deliver the request (§17.1.4): same as a timeout."""
        old = self.state
        new = self.state = self._next(Event.TRANSPORT_ERROR)
        if new is State.TERMINATED and old is not State.TERMINATED:
            self.user.on_timeout(self, now)
            self._finish()


class InviteClientTransaction(ClientTransaction):
    """§17.1.1 with RFC 6026 §7.2: 2xx moves to Accepted so 2xx retransmissions reach the TU."""

    __slots__ = ("_a_interval",)

    def _next(self, event: Event) -> State:
        return transition("INVITE client transaction", INVITE_CLIENT, self.state, event)

    def start(self, now: float) -> None:
        self.state = State.CALLING
        self._transmit()
        self._a_interval = self.settings.t1
        if not self.reliable:
            self._arm("A", self._a_interval, now, self._timer_a)
        self._arm("B", 64 * self.settings.t1, now, self._timer_b)

    def _timer_a(self, now: float) -> None:
        self.state = self._next(Event.TIMER_A)
        self._transmit()
        self._a_interval *= 2
        self._arm("A", self._a_interval, now, self._timer_a)

    def _timer_b(self, now: float) -> None:
        self.state = self._next(Event.TIMER_B)
        self.user.on_timeout(self, now)
        self._finish()

    def receive_response(self, response: Response, now: float) -> None:
        status = response.status
        old = self.state
        new = self.state = self._next(_response_event(status))
        if old is State.CALLING or old is State.PROCEEDING:
            self.last_status = status
            if new is State.PROCEEDING:
                if old is State.CALLING:
                    self._disarm("A", "B")
                self.user.on_response(self, response, now)
            elif new is State.ACCEPTED:
                self._disarm("A", "B")
                self.data = b""  # the INVITE is never retransmitted again
                self._arm("M", 64 * self.settings.t1, now, self._accepted_over)
                self.user.on_response(self, response, now)
            else:
                self._disarm("A", "B")
                self.data = b""
                self._send_ack(response)
                if self.reliable:
                    self.user.on_response(self, response, now)
                    self._timer_d(now)  # timer D is zero on a reliable transport
                else:
                    self._arm("D", 32.0, now, self._timer_d)
                    self.user.on_response(self, response, now)
        elif old is State.ACCEPTED:
            if 200 <= status < 300:
                self.user.on_response(self, response, now)
        elif old is State.COMPLETED and status >= 300:
            self._send_ack(response)

    def _timer_d(self, now: float) -> None:
        self.state = self._next(Event.TIMER_D)
        self._finish()

    def end_settled(self) -> None:
        """The wait of a transaction settled without one of its own (`settle(now, wait=False)`)
        is over: its owner says so. Any other transaction is left to its own timers."""
        if self.state is State.ACCEPTED and self._ender is None:
            self.state = self._next(Event.TIMER_M)
            self._finish()

    def _accepted_over(self, now: float) -> None:
        self.state = self._next(Event.TIMER_M)
        self._finish()

    def _send_ack(self, response: Response) -> None:
        """Hop-by-hop ACK for a non-2xx final response (§17.1.1.3)."""
        req = self.request
        headers = [h for h in req.headers if h[0] in ("call-id", "from", "max-forwards")]
        headers.insert(0, next(h for h in req.headers if h[0] == "via"))
        to = response.get("to")
        headers.append(("to", "To", to if to is not None else (req.get("to") or "")))
        headers.append(("cseq", "CSeq", f"{req.cseq.number} ACK"))
        headers.extend(h for h in req.headers if h[0] == "route")
        ack = Request("ACK", req.uri, headers)
        self.send(Datagram(ack.to_bytes(), self.dest, self.local))


class NonInviteClientTransaction(ClientTransaction):
    """§17.1.2."""

    __slots__ = ("_e_interval",)

    def _next(self, event: Event) -> State:
        return transition("non-INVITE client transaction", NON_INVITE_CLIENT, self.state,
                          event)

    def start(self, now: float) -> None:
        self.state = State.TRYING
        self._transmit()
        self._e_interval = self.settings.t1
        if not self.reliable:
            self._arm("E", self._e_interval, now, self._timer_e)
        self._arm("F", 64 * self.settings.t1, now, self._timer_f)

    def _timer_e(self, now: float) -> None:
        old = self.state
        self.state = self._next(Event.TIMER_E)
        self._transmit()
        if old is State.TRYING:
            self._e_interval = min(2 * self._e_interval, self.settings.t2)
        else:
            self._e_interval = self.settings.t2
        self._arm("E", self._e_interval, now, self._timer_e)

    def _timer_f(self, now: float) -> None:
        self.state = self._next(Event.TIMER_F)
        self.user.on_timeout(self, now)
        self._finish()

    def receive_response(self, response: Response, now: float) -> None:
        old = self.state
        new = self.state = self._next(_response_event(response.status))
        if old is State.COMPLETED:
            return  # a retransmitted final response: absorbed
        self.last_status = response.status
        if new is State.PROCEEDING:
            self.user.on_response(self, response, now)
            return
        self._disarm("E", "F")
        self.data = b""  # nothing is retransmitted any more
        self.user.on_response(self, response, now)
        self.request = SPENT
        if self.reliable:
            self._timer_k(now)  # timer K is zero on a reliable transport
        else:
            self._arm("K", self.settings.t4, now, self._timer_k)

    def _timer_k(self, now: float) -> None:
        self.state = self._next(Event.TIMER_K)
        self._finish()


def response_address(request: Request, source: Address) -> Address:
    """Where responses to `request` go (RFC 3261 §18.2.2, RFC 3581 §4)."""
    if source.reliable:
        return source  # back over the connection the request came in on
    via = request.top_via
    if "rport" in via.params or "maddr" not in via.params:
        # With rport, the source port; without, the sent-by port at the source IP
        # (the `received` address, §18.2.2).
        if "rport" in via.params:
            return source
        return address(source.transport, source.host, via.port or 5060)
    return address(source.transport, _maddr(via.params["maddr"], source), via.port or 5060)


def _maddr(value: str | None, source: Address) -> str:
    """A Via `maddr` as the host to answer to, when it is an IP address of the family the
    request came in on; the source address otherwise. The core never looks a name up, and
    the socket that answers sends only to its own family."""
    host = (value or "").strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return source.host
    return str(ip) if (ip.version == 6) == (":" in source.host) else source.host
