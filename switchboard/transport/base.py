"""What every endpoint offers the worker, and what it calls back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..sip.wire import Address

# (data, source, local): one whole SIP message as bytes.
Receiver = Callable[[bytes, Address, Address], None]
# (data, dest, local): a message an endpoint took but could not deliver after all (the
# connection it waited for did not open).
Undelivered = Callable[[bytes, Address, Address], None]
# (peer): a connection ended; `peer` is the source its messages were received from, so
# what was registered over it can go too (RFC 5626 §5.3).
ConnectionClosed = Callable[[Address], None]


class Endpoint(Protocol):
    local: Address

    def send(self, data: bytes, dest: Address) -> bool | None:
        """Hand `data` to the network toward `dest`; False when there is no way to (no
        connection to a peer that cannot be connected to), so the core can fail the
        transaction at once (RFC 3261 §17.1.4) instead of at its timeout. None (a wrapper
        that does not tell) counts as sent."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ConnectionEndpoint(Protocol):
    """An endpoint whose messages go over connections, where the address a message is sent
    to may be a name the connection is known by (an RFC 5923 alias, a WebSocket client's
    `.invalid` host) rather than the peer the bytes actually reach."""

    def peer_of(self, dest: Address) -> Address:
        """The address of the peer a message to `dest` would reach now: the connection's
        remote end when one is known by `dest`, else `dest` itself."""
        ...
