"""An in-memory location service and the REGISTER procedure (RFC 3261 §10.3).

Bindings map an address-of-record to contacts with an expiry. The proxy core asks
`lookup(aor_key, now)` to retarget requests for a registered user. Time is an argument.

A binding registered over a connection (TCP, TLS, WS, WSS) is reached over that connection
only, so it goes when the connection does (`drop_flow`, RFC 5626 §5.3, RFC 7118 §6): a
WebSocket client's `.invalid` Contact has no other way to it. Until it registers again or
the dropped binding would have expired, its AOR is `unreachable`: known, but offline.

Workers that share one address keep a copy of each other's bindings: every change a REGISTER
makes is told to `on_change` (a `BindingChange`, what the cluster sends the other workers),
and `apply` makes another worker's change here. The copies expire by themselves (each change
says how long its binding has left), and a connection that ends is told to every copy
(`drop_flow`), so neither needs a change of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ParseError
from .message import Request, Response, build_response
from .uri import Params, SipUri
from .wire import Address

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60
MAX_EXPIRES = 86400


@dataclass(slots=True)
class Binding:
    contact: str  # the contact URI as registered
    expires_at: float
    call_id: str
    cseq: int
    source: Address  # where the REGISTER came from (NAT-friendly delivery, RFC 5626 spirit)
    local: Address
    q: float = 1.0
    reached_only_over: bool = False  # only over the connection `source` (see `drop_flow`)
    # The worker of the node whose registrar took the REGISTER, -1 for this one: a worker
    # counts only its own bindings, so that the node's statistics add up to one table.
    origin: int = -1


@dataclass(frozen=True, slots=True)
class BindingChange:
    """A binding of `key` that a REGISTER added, refreshed or removed (`expires_in` 0), or,
    with `contact` "*", every binding of `key` removed (a wildcard Contact)."""

    key: str
    contact: str
    expires_in: float  # seconds left, 0 when removed
    call_id: str  # of the REGISTER: orders the changes of one registration (§10.3 step 7)
    cseq: int
    source: Address
    local: Address
    q: float = 1.0
    reached_only_over: bool = False  # only over the connection `source` (see `drop_flow`)
    origin: int = -1

    def binding(self, now: float) -> Binding:
        return Binding(self.contact, now + self.expires_in, self.call_id, self.cseq,
                       self.source, self.local, self.q, self.reached_only_over, self.origin)


def aor_key(uri: SipUri) -> str:
    """Addresses of record compare by user and host, case-folded (RFC 3261 §10.3 step 5)."""
    return f"{uri.user or ''}@{uri.host.lower()}"


def _reached_only_over(uri: object, params: Params, source: Address) -> bool:
    """Whether a contact registered over the connection `source` can only be reached over
    it, so that its binding goes when the connection does: a WebSocket client (a server
    cannot open a WebSocket connection, RFC 7118 §5), a Contact named `.invalid`, an outbound
    flow (`reg-id`, RFC 5626 §5.3), or a Contact that names the connection's own ephemeral
    address. A TCP or TLS Contact naming a listening address of its own stays: a new
    connection can be opened to it (what Kamailio's and OpenSIPS's registrars do by default)."""
    if not source.reliable:
        return False
    if source.transport in ("ws", "wss") or "reg-id" in params:
        return True
    if not isinstance(uri, SipUri):
        return False
    host = uri.host.lower()
    return host.endswith(".invalid") or (host.strip("[]") == source.host.lower()
                                         and (uri.port or _DEFAULT_PORT.get(source.transport, 5060))
                                         == source.port)


_DEFAULT_PORT = {"tls": 5061}  # RFC 3261 §19.1.2: sips/TLS 5061, else 5060

# Entries of the flow index and of the unreachable AORs kept before stale ones are looked
# for; then again at twice what is left, so the sweeps cost O(1) a change.
SWEEP_MIN = 64


class Location:
    __slots__ = ("_bindings", "_by_flow", "_flows_sweep_at", "_sweep_at", "_unreachable",
                 "on_change")

    def __init__(self) -> None:
        # Told of every change a REGISTER makes here (workers that keep copies of it).
        self.on_change: Callable[[BindingChange], None] | None = None
        self._bindings: dict[str, list[Binding]] = {}
        # A connection's peer → the AORs registered over it (some perhaps since gone).
        self._by_flow: dict[Address, set[str]] = {}
        # AOR → until when it counts as registered but unreachable (its flows failed).
        self._unreachable: dict[str, float] = {}
        self._sweep_at = SWEEP_MIN
        self._flows_sweep_at = SWEEP_MIN

    def lookup(self, key: str, now: float) -> list[Binding]:
        bindings = self._bindings.get(key)
        if not bindings:
            return []
        live = [b for b in bindings if b.expires_at > now]
        if len(live) != len(bindings):
            if live:
                self._bindings[key] = live
            else:
                del self._bindings[key]
        # Most preferred first, newest first among equals.
        return sorted(live, key=lambda b: (-b.q, -b.expires_at))

    def purge(self, now: float) -> None:
        for key in list(self._bindings):
            self.lookup(key, now)

    def drop_flow(self, source: Address, now: float) -> int:
        """The connection whose peer is `source` is gone: remove the bindings registered
        over it, leaving those of the same AORs over other connections. Answers how many
        went."""
        keys = self._by_flow.pop(source, None)
        if not keys:
            return 0
        dropped = 0
        for key in keys:
            bindings = self._bindings.get(key)
            if not bindings:
                continue
            kept = [b for b in bindings if b.source != source]
            if len(kept) == len(bindings):
                continue
            dropped += len(bindings) - len(kept)
            if kept:
                self._bindings[key] = kept
            else:
                del self._bindings[key]
                until = max(b.expires_at for b in bindings)
                if until > now:
                    self._unreachable[key] = until
        if len(self._unreachable) >= self._sweep_at:
            self._unreachable = {k: t for k, t in self._unreachable.items() if t > now}
            self._sweep_at = max(SWEEP_MIN, 2 * len(self._unreachable))
        return dropped

    def _index_flow(self, source: Address, key: str) -> None:
        by_flow = self._by_flow
        if source not in by_flow and len(by_flow) >= self._flows_sweep_at:
            # Connections whose end another worker saw (a shared port), or whose bindings
            # all expired or were replaced: rebuilt from the bindings there are.
            by_flow = self._by_flow = {}
            for aor, bindings in self._bindings.items():
                for b in bindings:
                    if b.source.reliable:
                        by_flow.setdefault(b.source, set()).add(aor)
            self._flows_sweep_at = max(SWEEP_MIN, 2 * len(by_flow))
        by_flow.setdefault(source, set()).add(key)

    def unreachable(self, key: str, now: float) -> bool:
        """`key` has no binding only because the connections it registered over are gone,
        and would still be registered otherwise: offline (480), not unknown (404)."""
        until = self._unreachable.get(key)
        if until is None:
            return False
        if until <= now:
            del self._unreachable[key]
            return False
        return True

    def __len__(self) -> int:
        """The bindings registered here (copies of other workers' bindings not counted)."""
        return sum(1 for bindings in self._bindings.values() for b in bindings if b.origin < 0)

    def apply(self, change: BindingChange, now: float) -> None:
        """Another worker's change, made to this copy; nothing is told to `on_change`. A
        change older than the binding here (same registration, lower CSeq) is ignored."""
        key = change.key
        if change.contact == "*":
            self._bindings.pop(key, None)
            self._unreachable.pop(key, None)
            return
        bindings = self._bindings.get(key, [])
        existing = next((b for b in bindings if b.contact == change.contact), None)
        if existing is not None:
            if existing.call_id == change.call_id and existing.cseq > change.cseq:
                return
            bindings.remove(existing)
        if existing is not None or change.expires_in > 0:
            self._unreachable.pop(key, None)
        if change.expires_in > 0:
            bindings.append(change.binding(now))
            self._bindings[key] = bindings
            if change.reached_only_over:
                self._index_flow(change.source, key)
        elif not bindings:
            self._bindings.pop(key, None)

    def table(self, now: float) -> list[BindingChange]:
        """Every live binding as a change that adds it: what a worker that starts applies."""
        return [BindingChange(key, b.contact, b.expires_at - now, b.call_id, b.cseq,
                              b.source, b.local, b.q, b.reached_only_over, b.origin)
                for key, bindings in self._bindings.items() for b in bindings
                if b.expires_at > now]

    def register(self, request: Request, key: str, source: Address, local: Address,
                 now: float, to_tag: str) -> Response:
        """Apply a REGISTER to the bindings of `key` and build the answer."""
        contacts = request.contacts
        header_expires = _expires(request.get("expires"))
        bindings = self._bindings.setdefault(key, [])
        call_id = request.call_id
        cseq = request.cseq.number
        if any(c.is_wildcard for c in contacts):
            # `Contact: *` is only legal alone and with Expires: 0 (§10.3 step 6).
            if len(contacts) != 1 or header_expires != 0:
                raise ParseError("wildcard Contact needs Expires: 0 and no other contact")
            self._bindings.pop(key, None)
            self._unreachable.pop(key, None)
            if self.on_change is not None:
                self.on_change(BindingChange(key, "*", 0.0, call_id, cseq, source, local))
            return build_response(request, 200, to_tag=to_tag)
        for contact in contacts:
            expires = _expires(contact.params.get("expires"))
            if expires is None:
                expires = header_expires if header_expires is not None else DEFAULT_EXPIRES
            if 0 < expires < MIN_EXPIRES:
                return build_response(request, 423, to_tag=to_tag,
                                      extra=[("Min-Expires", str(MIN_EXPIRES))])
            expires = min(expires, MAX_EXPIRES)
            uri = str(contact.uri)
            existing = next((b for b in bindings if b.contact == uri), None)
            if existing is not None:
                if existing.call_id == call_id and cseq <= existing.cseq:
                    return build_response(request, 500, "Out of order CSeq", to_tag=to_tag)
                bindings.remove(existing)
            if existing is not None or expires:
                self._unreachable.pop(key, None)  # the user speaks for itself again
            q = 1.0
            flow = False
            if expires:
                q = _q(contact.params.get("q"))
                flow = _reached_only_over(contact.uri, contact.params, source)
                bindings.append(Binding(uri, now + expires, call_id, cseq, source, local, q,
                                        flow))
                if flow:
                    self._index_flow(source, key)
            if self.on_change is not None and (existing is not None or expires):
                self.on_change(BindingChange(key, uri, float(expires), call_id, cseq, source,
                                             local, q, flow))
        live = self.lookup(key, now)
        extra = [("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
                 for b in live]
        return build_response(request, 200, to_tag=to_tag, extra=extra)


def _expires(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise ParseError(f"bad expires value {value!r}")
    return min(int(value), 2**31)


def _q(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        q = float(value)
    except ValueError as exc:
        raise ParseError(f"bad q value {value!r}") from exc
    return q if 0.0 <= q <= 1.0 else 1.0
