"""Addresses and the output the sans-IO core hands to its driver."""

from __future__ import annotations

from typing import Final, NamedTuple

from .memo import remember

# A named tuple, not a frozen dataclass: a frozen dataclass pays an `object.__setattr__` per
# field (three times slower to build), and an address is a dictionary key everywhere.


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


# The addresses `address` made, by their three parts: a named tuple's `__new__` runs
# interpreted (~1,000 instructions), a lookup by a plain tuple equal to it does not.
_MADE: Final[dict[tuple[str, str, int], Address]] = {}
MADE_KEPT: Final = 4096  # the parts come off the wire (a Via's port): bounded


def address(transport: str, host: str, port: int) -> Address:
    """`Address(transport, host, port)`, the same object for the same parts while it is
    kept: for the core's hot paths, which would otherwise make one per message."""
    parts = (transport, host, port)
    made = _MADE.get(parts)
    if made is None:
        made = remember(_MADE, parts, Address(transport, host, port), MADE_KEPT)
    return made


# RFC 3261 §19.1.2, RFC 7118 §5.2 (the HTTP ports a WebSocket URI defaults to).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


def default_port(transport: str) -> int:
    return DEFAULT_PORTS.get(transport, 5060)


class Datagram:
    """Bytes to send to `dest` from the local socket `local`.

    A class of its own rather than a named tuple like `Address`: seven are made per call,
    and mypyc builds a native object directly, while a named tuple's `__new__` runs
    interpreted. Nothing keys a table by a datagram or unpacks one."""

    __slots__ = ("data", "dest", "local")

    def __init__(self, data: bytes, dest: Address, local: Address) -> None:
        self.data = data
        self.dest = dest
        self.local = local

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Datagram):
            return NotImplemented
        return self.data == other.data and self.dest == other.dest and self.local == other.local

    __hash__ = None  # type: ignore[assignment]  # compared by value, never a key

    def __repr__(self) -> str:
        return f"Datagram(data={self.data!r}, dest={self.dest!r}, local={self.local!r})"
