"""SIP requests written by hand for tests that talk to a running switchboard over a socket, and
the start-line reading shared by the tests' records of messages seen on the wire."""

from __future__ import annotations

from tests.support.ports import HOST


def options(port: int, local_port: int, max_forwards: int, call_id: str) -> bytes:
    """The OPTIONS ping a dispatcher (OpenSIPS, Kamailio) sends a SIP server on `port` from
    `local_port`, all on 127.0.0.1 over UDP."""
    return (
        f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK-{call_id}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:dispatcher@{HOST}>;tag=ds1\r\n"
        f"To: <sip:{HOST}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 10 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class StartLine:
    """A request's method or a response's status, read from the start line a subclass gives
    (what the HEP collector captured, what a baresip peer traced)."""

    @property
    def start_line(self) -> str:
        raise NotImplementedError

    @property
    def method(self) -> str | None:
        """The request's method, or None for a response."""
        first = self.start_line.split(" ", 1)[0]
        return None if first == "SIP/2.0" else first

    @property
    def status(self) -> int | None:
        return int(self.start_line.split(" ", 2)[1]) if self.method is None else None
