"""Addresses and the output the sans-IO core hands to its driver."""

from __future__ import annotations

from typing import NamedTuple

# Named tuples, not frozen dataclasses: several of each are made per message, and a frozen
# dataclass pays an `object.__setattr__` per field (three times slower to build).


class Address(NamedTuple):
    """A transport address: `udp`/`tcp`, host (IPv6 without brackets), port."""

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


class Datagram(NamedTuple):
    """Bytes to send to `dest` from the local socket `local`."""

    data: bytes
    dest: Address
    local: Address
