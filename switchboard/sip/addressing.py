"""Where the proxy is and where a request goes next: our own addresses and domains, the
Record-Route and Via we write, Route processing (RFC 3261 §16.4, §16.6 step 6), next-hop
resolution without DNS, the socket that faces a destination, and the sent-by a connection's
peer names itself with (what the transports alias a connection under).

Transports: udp, tcp, tls (RFC 3261 §26, RFC 5630), ws and wss (RFC 7118). Their names are
compared in lower case (`transport=TLS` is common); a `sips:` URI is reached over TLS only.

Host names other than IP literals are resolved only through a static table: the core never
blocks on DNS. What is derived from message text is cached in bounded memos, since the keys
come off the wire.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Final

from .errors import ParseError
from .headers import Via, parse_via
from .memo import remember
from .message import Request
from .uri import SipUri, Uri, parse_name_addr
from .wire import Address, address, default_port

SIG_PARAM = "sb="  # our Record-Route's signature parameter
SIG_LEN = 16
# The worker mark, when the workers of a node share one address: our Record-Route URI
# carries `;wk=<worker hex>` and our Via branch ends `.w<worker hex>`, so that whichever
# worker the kernel hands a later message to can pass it to the one that owns its dialog
# or transaction without parsing it (`cluster/owner.py` reads them).
WORKER_PARAM = "wk="
BRANCH_MARK = ".w"

TRANSPORTS: Final = ("udp", "tcp", "tls", "ws", "wss")
# RFC 5630 §3.1.1, RFC 7118 §5: a `sips:` URI over a stream is TLS, over WebSocket WSS; no
# `sips:` goes over UDP.
_SECURE: Final = {"tcp": "tls", "tls": "tls", "ws": "wss", "wss": "wss"}
# The top Via of a message as bytes: a request's first Via line (or its compact form).
_TOP_VIA: Final = re.compile(rb"\n(?:via|v)[ \t]*:[ \t]*([^\r\n,]*)", re.IGNORECASE)


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


def rr_uri(local: Address, signature: str, sips: bool = False, mark: str = "") -> str:
    """Our Record-Route URI on socket `local`, with the route's signature if any. For a
    `sips:` request the entry on a TLS-backed socket is a `sips:` URI too (RFC 3261 §16.6
    step 4; RFC 5658 for each of a doubled pair), so the route set keeps every hop
    secure; `transport=tls` is not written under `sips:` (RFC 5630 deprecates it), and
    WSS is `sips:` with `transport=ws` (RFC 7118 §5.2). `mark` is the worker mark (a hex
    worker number, "" for none)."""
    signed = f";{SIG_PARAM}{signature}" if signature else ""
    if mark:
        signed = f";{WORKER_PARAM}{mark}{signed}"
    transport = local.transport
    if sips and local.secure:
        suffix = "" if transport == "tls" else ";transport=ws"
        return f"sips:{local.hostport}{suffix};lr{signed}"
    suffix = "" if transport == "udp" else f";transport={transport}"
    return f"sip:{local.hostport}{suffix};lr{signed}"


def is_sips(uri: str) -> bool:
    """A `sips:` URI, from its text (the scheme is case-insensitive, RFC 3261 §19.1.4)."""
    return uri[:5].lower() == "sips:"


def via(local: Address, branch: str) -> Via:
    # SIP/2.0/UDP, TCP, TLS, WS, WSS (RFC 7118 §5.4).
    return Via(local.transport.upper(), local.uri_host, local.port, {"branch": branch})


def request_sent_by(data: bytes) -> tuple[str, str, int | None] | None:
    """(transport, host, port) of a request's top Via, from its bytes; None for a response or
    when there is no readable Via. A connection-oriented transport aliases the connection a
    request came over under this sent-by (RFC 5923 §5), so that requests toward the UA
    (its Contact carries the same host, and a WebSocket client's is a `.invalid` name that
    only that connection reaches, RFC 7118 §5) go back over that connection."""
    if data.startswith(b"SIP/"):
        return None
    m = _TOP_VIA.search(data, 0, 4096)
    if m is None:
        return None
    try:
        top = parse_via(m.group(1).decode("utf-8", "surrogateescape"))
    except ParseError:
        return None
    return top.transport.lower(), top.host.strip("[]").lower(), top.port


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
        # Set by the driver: the transport (ws or wss) of the live WebSocket connection a
        # client's name is known by, None when none is.
        self.connection_transport: Callable[[str], str | None] | None = None
        # Set by the driver whose workers share one address: this worker's number in hex,
        # written into our Record-Route and Via branch ("": nothing written, the wire as
        # a single worker has it).
        self.worker_mark = ""

    def record_route(self, local: Address, signature: str, sips: bool) -> str:
        """Our Record-Route URI on socket `local` (`rr_uri`), with the worker mark if any."""
        return rr_uri(local, signature, sips, self.worker_mark)

    def via(self, local: Address, branch: str) -> Via:
        """Our Via on socket `local`; with a worker mark, the branch ends with it."""
        mark = self.worker_mark
        return via(local, f"{branch}{BRANCH_MARK}{mark}" if mark else branch)

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
        """The address a request toward `uri` goes to; None when it cannot go anywhere: an
        unknown transport, a host that is neither an IP literal nor in the table, a `sips:`
        URI over UDP. A WebSocket URI keeps its host name as it is: a WebSocket client is
        reached only over the connection it opened, which its transport finds by that name."""
        transport = uri.transport
        if uri.scheme == "sips":
            secure = _SECURE.get(transport)
            if secure is None:
                return None
            transport = secure
        elif transport not in TRANSPORTS:
            return None
        name = uri.params.get("maddr") or uri.host
        try:
            host = self._resolved[name]
        except KeyError:
            host = remember(self._resolved, name, self.resolve_host(name))
        if host is None:
            if transport != "ws" and transport != "wss":
                return None
            host = name.strip("[]").lower()
            # A client on WSS still writes transport=ws (RFC 7118 §5.2): go out on the
            # listener of the connection it really uses, whose Via and Record-Route it sees.
            lookup = self.connection_transport
            live = lookup(host) if lookup is not None else None
            if live is not None and uri.scheme != "sips":
                transport = live
        return address(transport, host, uri.port or default_port(transport))

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
        """Our socket for sending to `dest`: same transport, same address family if any. A
        WebSocket client's Contact says `transport=ws` even when it connected over WSS
        (RFC 7118 §5.2): either WebSocket listener reaches its connection."""
        local = self._listener(dest.transport, ":" in dest.host)
        if local is None and dest.transport in ("ws", "wss"):
            local = self._listener("wss" if dest.transport == "ws" else "ws", ":" in dest.host)
        return local

    def local_toward(self, dest: Address, facing: Address | None) -> Address | None:
        """Our socket for a request to `dest` in a dialog: the one that faces its party
        (`facing`, the leg's `local`: where its messages came to, or ours went from), when
        it reaches `dest`; else `local_for`. A UA behind NAT accepts messages only from the
        address it sent to, and a node with two addresses of one transport must not answer
        a party from the other one."""
        if (facing is not None and facing.transport == dest.transport
                and (":" in facing.host) == (":" in dest.host)):
            return facing
        return self.local_for(dest)

    def _listener(self, transport: str, v6: bool) -> Address | None:
        fallback = None
        for listener in self.listeners:
            if listener.transport == transport:
                if (":" in listener.host) == v6:
                    return listener
                fallback = fallback or listener
        return fallback
