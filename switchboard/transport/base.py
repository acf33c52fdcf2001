"""What every endpoint offers the worker, and what it calls back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..sip.wire import Address

# (data, source, local): one whole SIP message as bytes.
Receiver = Callable[[bytes, Address, Address], None]


class Endpoint(Protocol):
    local: Address

    def send(self, data: bytes, dest: Address) -> None: ...

    def close(self) -> None: ...
