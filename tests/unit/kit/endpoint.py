"""An endpoint that reaches nobody: it keeps what the worker or a wrapper sends through it
and whether it was closed, for the tests of what sits between the worker and its sockets."""

from __future__ import annotations

from switchboard.sip.wire import Address


class RecordingEndpoint:
    def __init__(self, local: Address) -> None:
        self.local = local
        self.sent: list[tuple[bytes, Address]] = []
        self.closed = False

    def send(self, data: bytes, dest: Address) -> None:
        self.sent.append((data, dest))

    def close(self) -> None:
        self.closed = True
