"""Where the proxy is and where a request goes next: our own addresses and domains, the
Record-Route and Via we write, Route processing (RFC 3261 §16.4, §16.6 step 6), next-hop
resolution without DNS, and the socket that faces a destination.

Host names other than IP literals are resolved only through a static table: the core never
blocks on DNS. What is derived from message text is cached in bounded memos, since the keys
come off the wire.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar

from .headers import Via
from .message import Request
from .uri import SipUri, Uri, parse_name_addr
from .wire import Address

_K = TypeVar("_K")
_V = TypeVar("_V")

SIG_PARAM = "sb="  # our Record-Route's signature parameter
SIG_LEN = 16


def remember(memo: dict[_K, _V], key: _K, value: _V, limit: int = 65536) -> _V:
    """Store `value` in a memo of something derived from message text (a trusted source, a
    next-hop address, our own Route): bounded, since the keys come off the wire."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


def signature_of(value: str) -> tuple[str, str]:
    """(the Route or URI text without our signature parameter, the signature or "")."""
    at = value.find(";" + SIG_PARAM)
    if at < 0:
        return value, ""
    start = at + 1 + len(SIG_PARAM)
    end = start + SIG_LEN
    return value[:at] + value[end:], value[start:end]


def target(uri: Uri | None) -> str:
    """A remote target as signatures and comparisons see it: scheme, user, host, port."""
    if not isinstance(uri, SipUri):
        return str(uri) if uri is not None else ""
    return f"{uri.scheme}:{uri.user or ''}@{uri.host.lower()}:{uri.port or 0}"


def rr_uri(local: Address, signature: str) -> str:
    """Our Record-Route URI on socket `local`, with the route's signature if any."""
    suffix = ";transport=tcp" if local.transport == "tcp" else ""
    signed = f";{SIG_PARAM}{signature}" if signature else ""
    return f"sip:{local.hostport}{suffix};lr{signed}"


def via(local: Address, branch: str) -> Via:
    return Via(local.transport.upper(), local.uri_host, local.port, {"branch": branch})


class Addressing:
    """The proxy's own addresses, domains and host table, and what follows from them."""

    def __init__(self, listeners: tuple[Address, ...], domains: Iterable[str],
                 hosts: Iterable[tuple[str, str]]) -> None:
        self.listeners = listeners
        self.own = {(a.host.lower(), a.port) for a in listeners}
        self.domains = {d.lower() for d in domains}
        self._hosts = dict(hosts)
        # Next-hop host names as written → the address to send to (None: unresolvable);
        # parsing an IP literal again for every relayed message cost 2% of a call.
        self._resolved: dict[str, str | None] = {}
        self._own_routes: dict[str, bool] = {}

    def serves_domain(self, uri: SipUri) -> bool:
        """A registrar domain of ours: a configured domain or any of our addresses."""
        host = uri.host.strip("[]").lower()
        return host in self.domains or any(host == h for h, _ in self.own)

    def is_own(self, uri: SipUri) -> bool:
        host = uri.host.strip("[]").lower()
        if host in self.domains:
            return True
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        return (host, port) in self.own

    def preprocess_routes(self, req: Request) -> str:
        """§16.4: undo a strict router's rewrite, then pop the Route entries that are us.
        Answers the signature our popped entries carried ("" if none)."""
        signature = ""
        ruri = req.ruri
        if isinstance(ruri, SipUri) and self.is_own(ruri) and ruri.has_param("lr"):
            signature = signature_of(req.uri)[1]
            routes = req.values("route")
            if routes:
                last = routes[-1]
                req.uri = str(parse_name_addr(last).uri)
                req.remove("route")
                for value in routes[:-1]:
                    req.append("route", value)
        while True:
            routes = req.values("route")
            if not routes:
                return signature
            unsigned, sig = signature_of(routes[0])
            if not self.own_route(unsigned):
                return signature
            signature = signature or sig
            req.pop_first_value("route")

    def own_route(self, value: str) -> bool:
        """Whether a Route value (its signature cut) names us. In-dialog requests carry
        our Record-Route back as written, the same few strings over and over: each is
        parsed once."""
        own = self._own_routes.get(value)
        if own is None:
            top = parse_name_addr(value).uri
            own = remember(self._own_routes, value,
                           isinstance(top, SipUri) and self.is_own(top), limit=4096)
        return own

    @staticmethod
    def next_hop(req: Request) -> SipUri | None:
        """The URI the request goes to next, fixing up a strict-routing next hop (§16.6.6)."""
        routes = req.values("route")
        if routes:
            top = parse_name_addr(routes[0]).uri
            if not isinstance(top, SipUri):
                return None
            if not top.has_param("lr"):
                req.pop_first_value("route")
                req.append("route", f"<{req.uri}>")
                req.uri = str(top)
            return top
        ruri = req.ruri
        return ruri if isinstance(ruri, SipUri) else None

    def resolve(self, uri: SipUri) -> Address | None:
        transport = uri.transport
        if transport not in ("udp", "tcp"):
            return None
        name = uri.params.get("maddr") or uri.host
        try:
            host = self._resolved[name]
        except KeyError:
            host = remember(self._resolved, name, self.resolve_host(name))
        if host is None:
            return None
        return Address(transport, host, uri.port or 5060)

    def resolve_host(self, name: str) -> str | None:
        """An IP literal as it is, a configured host name to its address, else None (no
        DNS on the hot path)."""
        host = name.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return self._hosts.get(host.lower())
        return host

    def local_for(self, dest: Address) -> Address | None:
        """Our socket for sending to `dest`: same transport, same address family if any."""
        v6 = ":" in dest.host
        fallback = None
        for listener in self.listeners:
            if listener.transport == dest.transport:
                if (":" in listener.host) == v6:
                    return listener
                fallback = fallback or listener
        return fallback
