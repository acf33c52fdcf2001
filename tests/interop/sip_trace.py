"""What a baresip peer sent and received, read back from its `--sip-trace` output: the
interop tests assert on the real messages, not only on the peers' events."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.interop.baresip import BaresipPeer
from tests.support.sip import StartLine

# "<date> <time> <user> baresip.native.sip DEBUG TX UDP 127.0.0.1:A -> 127.0.0.1:B" (or TCP,
# TLS), then the message, up to the next log line.
_TRACE_HEAD = re.compile(
    r"^\S+ \S+ \S+ baresip\.native\.sip DEBUG (?P<dir>TX|RX) (?P<transport>UDP|TCP|TLS) "
    r"(?P<src>\S+) -> (?P<dst>\S+)$"
)
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


@dataclass(frozen=True)
class Traced(StartLine):
    """One SIP message from a peer's --sip-trace."""

    direction: str  # "TX" | "RX"
    src: str
    dst: str
    text: str
    transport: str = "UDP"  # UDP, TCP or TLS, as baresip writes it

    @property
    def start_line(self) -> str:
        return self.text.split("\n", 1)[0]

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = self.header("CSeq")[0].partition(" ")
        return int(number), method.strip()

    @property
    def remote(self) -> str:
        return self.dst if self.direction == "TX" else self.src

    @property
    def body(self) -> str:
        return self.text.split("\n\n", 1)[1] if "\n\n" in self.text else ""

    def header(self, name: str) -> list[str]:
        head = self.text.split("\n\n", 1)[0]
        out = []
        for line in head.split("\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    def __str__(self) -> str:
        return f"{self.direction} {self.start_line} (CSeq {' '.join(map(str, self.cseq))})"


def trace(p: BaresipPeer, call_id: str | None = None) -> list[Traced]:
    """The SIP messages `p` sent and received (those of one Call-ID if given)."""
    messages: list[Traced] = []
    current: tuple[re.Match[str], list[str]] | None = None

    def flush() -> None:
        if current is not None:
            head, lines = current
            messages.append(
                Traced(head["dir"], head["src"], head["dst"], "\n".join(lines).strip("\n"),
                       head["transport"])
            )

    for line in p.stderr.splitlines():
        head = _TRACE_HEAD.match(line)
        if head is not None or _LOG_LINE.match(line):
            flush()
            current = (head, []) if head is not None else None
        elif current is not None:
            current[1].append(line)
    flush()
    if call_id is None:
        return messages
    return [m for m in messages if call_id in m.header("Call-ID")]
