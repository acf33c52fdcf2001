"""Addresses and the output the sans-IO core hands to its driver."""

from __future__ import annotations

from typing import NamedTuple

# Named tuples, not frozen dataclasses: several of each are made per message, and a frozen
# dataclass pays an `object.__setattr__` per field (three times slower to build).


class Address(NamedTuple):
    """A transport address: `udp`, `tcp`, `tls`, `ws` or `wss` (lower case), host (IPv6
    without brackets), port. Over a connection (every transport but `udp`) it names the peer
    end of one connection; toward a WebSocket client that can only be reached over the
    connection it opened, the host may be the `.invalid` name it uses (RFC 7118 §5)."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{self.uri_host}:{self.port}"

    @property
    def uri_host(self) -> str:
        """The host as a URI or Via writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def hostport(self) -> str:
        return f"{self.uri_host}:{self.port}"

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def secure(self) -> bool:
        """TLS underneath: what a `sips:` URI requires on every hop (RFC 3261 §26.2.2)."""
        return self.transport == "tls" or self.transport == "wss"


# RFC 3261 §19.1.2, RFC 7118 §5.2 (the HTTP ports a WebSocket URI defaults to).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


def default_port(transport: str) -> int:
    return DEFAULT_PORTS.get(transport, 5060)


class Datagram(NamedTuple):
    """Bytes to send to `dest` from the local socket `local`."""

    data: bytes
    dest: Address
    local: Address
