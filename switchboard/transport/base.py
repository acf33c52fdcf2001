"""What every endpoint offers the worker, and what it calls back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..sip.wire import Address

# (data, source, local): one whole SIP message as bytes.
Receiver = Callable[[bytes, Address, Address], None]


class Endpoint(Protocol):
    local: Address

    def send(self, data: bytes, dest: Address) -> bool | None:
        """Hand `data` to the network toward `dest`; False when there is no way to (no
        connection to a peer that cannot be connected to), so the core can fail the
        transaction at once (RFC 3261 §17.1.4) instead of at its timeout. None (a wrapper
        that does not tell) counts as sent."""
        ...

    def close(self) -> None: ...
