"""The text forms a configuration value takes, in the file and on the `serve` command line:
addresses (`IP:PORT`, `udp:IP:PORT`) and the names a key may hold (a URI parameter, a SIP
method, a digest algorithm, a domain, a network, an event).

Each parser takes one string and returns the value or raises `ValueError` saying what is
wrong with it; which key or flag the string came from is for the caller to add.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from switchboard.events import KNOWN_EVENTS
from switchboard.events.sinks import parse_sink

Transport = Literal["udp", "tcp", "tls", "ws", "wss"]
RuntimeKind = Literal["local", "ray"]
Allocator = Literal["python", "mimalloc"]
CallopsMode = Literal["param", "manual", "callid"]

TRANSPORTS: Final[tuple[Transport, ...]] = ("udp", "tcp", "tls", "ws", "wss")
RUNTIME_KINDS: Final[tuple[RuntimeKind, ...]] = ("local", "ray")
ALLOCATORS: Final[tuple[Allocator, ...]] = ("python", "mimalloc")
CALLOPS_MODES: Final[tuple[CallopsMode, ...]] = ("param", "manual", "callid")
# The digest algorithms (RFC 8760) the proxy can check.
DIGEST_ALGORITHMS: Final = ("SHA-256", "MD5")
# A HEP v3 capture agent id is a 32-bit field.
MAX_CAPTURE_ID: Final = 0xFFFFFFFF

# An RFC 3261 `Method` token.
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A URI parameter name must survive unescaped in a Refer-To URI (RFC 3261 §25.1 `pname`).
_URI_PARAM_NAME = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+\Z")


@dataclass(frozen=True, slots=True)
class HostPort:
    """An IP address and port; `host` carries no IPv6 brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenSocket:
    """A SIP listening socket, `TRANSPORT:IP:PORT` (udp, tcp, tls, ws, wss). Port 0 binds a
    free port."""

    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{HostPort(self.host, self.port)}"


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _parse_port(text: str, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"port must be a number in {low}..65535, not {text!r}")
    return int(text)


def parse_host_port(text: str, *, allow_zero: bool = True) -> HostPort:
    """`IP:PORT`, or `[IPv6]:PORT`."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, not {text!r}")
        port_text = rest[1:]
        if ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected IP:PORT, not {text!r}")
        if ":" in host:
            raise ValueError(f"put an IPv6 address in brackets: [{host}]:{port_text}")
    return HostPort(_parse_ip(host), _parse_port(port_text, allow_zero=allow_zero))


def parse_listen(text: str) -> ListenSocket:
    """A listen socket string: `udp:IP:PORT`, `tcp:`, `tls:`, `ws:` or `wss:` (IPv6 in
    brackets)."""
    transport, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"expected TRANSPORT:IP:PORT (udp, tcp, tls, ws, wss), not {text!r}")
    for known in TRANSPORTS:
        if transport == known:
            address = parse_host_port(rest)
            return ListenSocket(known, address.host, address.port)
    raise ValueError(f"unknown transport {transport!r} in {text!r} "
                     f"(expected {', '.join(TRANSPORTS)})")


def parse_mi_http(text: str) -> HostPort | None:
    """The MI's `IP:PORT`; "" for none."""
    return None if text == "" else parse_host_port(text)


def show_mi_http(value: HostPort | None) -> str:
    return "" if value is None else str(value)


def parse_dialog_store(text: str) -> str:
    """A dialog store URL, `sqlite:PATH` or `redis://HOST[:PORT][/DB]`; "" for none
    (memory only)."""
    if text == "":
        return text
    kind, sep, rest = text.partition(":")
    if kind == "sqlite" and sep and rest:
        return text
    if kind == "redis":
        try:
            parts = urlsplit(text)
            port = parts.port  # ValueError when it is not a number
        except ValueError as exc:
            raise ValueError(f"{exc}: expected redis://HOST[:PORT][/DB]") from None
        db = parts.path.strip("/")
        if parts.hostname and (not db or db.isdigit()) and not parts.query and port != 0:
            return text
        raise ValueError("expected redis://HOST[:PORT][/DB]")
    raise ValueError('expected sqlite:PATH or redis://HOST[:PORT][/DB], or "" for none')


def parse_hep(text: str) -> HostPort | None:
    """A HEP collector, `udp:IP:PORT`; "" for none."""
    if text == "":
        return None
    transport, sep, rest = text.partition(":")
    if not sep or transport != "udp":
        raise ValueError(f"expected udp:IP:PORT, not {text!r}")
    return parse_host_port(rest, allow_zero=False)


def show_hep(value: HostPort | None) -> str:
    return "" if value is None else f"udp:{value}"


def parse_datagram_socket(text: str) -> str:
    address = parse_sink(text)
    if address.transport != "udp":
        raise ValueError(f"expected udp:IP:PORT, not {text!r}")
    return str(address)


def parse_event_socket(text: str) -> str:
    return str(parse_sink(text))


def parse_webhook(text: str) -> str:
    address = parse_sink(text)
    if not address.webhook:
        raise ValueError(f"expected an http:// or https:// URL, not {text!r}")
    return str(address)


def parse_event(text: str) -> str:
    if text not in KNOWN_EVENTS:
        raise ValueError(f"unknown event {text!r} (known: {', '.join(KNOWN_EVENTS)})")
    return text


def parse_match_param(text: str) -> str:
    if not _URI_PARAM_NAME.match(text):
        raise ValueError(f"{text!r} is not a valid URI parameter name")
    return text


def parse_method(text: str) -> str:
    """A SIP method, upper-cased, or "*"."""
    if text != "*" and not _METHOD.fullmatch(text):
        raise ValueError(f'not a SIP method or "*": {text!r}')
    return text.upper()


def parse_algorithm(text: str) -> str:
    if text not in DIGEST_ALGORITHMS:
        raise ValueError(f"{text!r} is not one of {', '.join(DIGEST_ALGORITHMS)}")
    return text


def parse_domain(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"not a domain: {text!r}")
    return text


def parse_network(text: str) -> str:
    """An IP network (`10.0.0.0/8`, host bits allowed), kept as written."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text!r}") from None
    return text
