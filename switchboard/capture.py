"""A bounded in-memory capture of SIP messages per call, for the console's ladder diagrams.

`MessageCapture` keeps, for each of the last `max_dialogs` Call-IDs that carried traffic, the
last `max_messages` messages: the time, the direction (`in` to us, `out` from us), the peer and
our own address, the first line and the CSeq. Never the rest of the message: a capture holds
no bodies or credentials, and its memory is bounded by the two numbers. The oldest call (by
its last message) is forgotten first.

`TappedEndpoint` copies what an endpoint sends into the capture, the way `hep.py` mirrors
it; `Worker.tap` puts it in and takes it out and gives the worker the capture for what it
receives, so while nobody captures the hot path is as it was. `CaptureSwitch` turns the
capture on for a lease that the console renews and off when the lease runs out.
`CaptureControl` is what the REST API asks of a node's capture, wherever its workers run: the
`local` runtime's `CaptureSwitch` answers it at once, the `ray` runtime's asks every worker's
own switch.

This module reads a message's bytes only as far as the first line, Call-ID and CSeq; it knows
nothing of HTTP or of what a dialog is.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .sip.wire import Address
from .transport.base import Endpoint

MAX_DIALOGS: Final = 1000
MAX_MESSAGES: Final = 64
MAX_FIRST_LINE: Final = 200
LEASE: Final = 600.0

# RFC 3261 §7.3.3: `i` is the compact form of Call-ID. Headers only: the search stops at the
# blank line, so a body that looks like a header is never taken for one.
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r?$",
                      re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*([0-9]+[ \t]+[A-Za-z]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Captured:
    """One message as the ladder shows it."""

    at: float
    direction: str  # "in": from `peer` to `local`; "out": from `local` to `peer`
    peer: str
    local: str
    first_line: str
    cseq: str

    def view(self) -> dict[str, Any]:
        return {"at": self.at, "direction": self.direction, "peer": self.peer,
                "local": self.local, "first_line": self.first_line, "cseq": self.cseq}


def _address(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{address.transport}:{host}:{address.port}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class MessageCapture:
    """The last `max_messages` messages of each of the last `max_dialogs` calls."""

    def __init__(self, max_dialogs: int = MAX_DIALOGS, max_messages: int = MAX_MESSAGES, *,
                 clock: Callable[[], float] = time.time) -> None:
        if max_dialogs < 1 or max_messages < 1:
            raise ValueError("a capture keeps at least one message of one call")
        self.max_dialogs = max_dialogs
        self.max_messages = max_messages
        self._clock = clock
        self._calls: OrderedDict[str, deque[Captured]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def received(self, data: bytes, source: Address, local: Address) -> None:
        self._take(data, "in", source, local)

    def sent(self, data: bytes, dest: Address, local: Address) -> None:
        self._take(data, "out", dest, local)

    def _take(self, data: bytes, direction: str, peer: Address, local: Address) -> None:
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end + 2]
        found = _CALL_ID.search(head)
        if found is None:  # keep-alives, garbage: nothing to file them under
            return
        call_id = _text(found.group(1))
        line_end = head.find(b"\n")
        first = head if line_end < 0 else head[:line_end]
        cseq = _CSEQ.search(head)
        item = Captured(
            self._clock(), direction, _address(peer), _address(local),
            _text(first.rstrip(b"\r")[:MAX_FIRST_LINE]),
            " ".join(_text(cseq.group(1)).split()) if cseq else "")
        calls = self._calls
        messages = calls.get(call_id)
        if messages is None:
            if len(calls) >= self.max_dialogs:
                calls.popitem(last=False)
            messages = calls[call_id] = deque(maxlen=self.max_messages)
        else:
            calls.move_to_end(call_id)
        messages.append(item)

    def messages(self, call_id: str) -> list[Captured] | None:
        """The messages of `call_id`, oldest first; None when none was captured."""
        found = self._calls.get(call_id)
        return None if found is None else list(found)

    def clear(self) -> None:
        self._calls.clear()


class Tap(Protocol):
    def received(self, data: bytes, source: Address, local: Address) -> None: ...

    def sent(self, data: bytes, dest: Address, local: Address) -> None: ...


class TappedEndpoint:
    """`inner`, with every message it sends copied to a tap."""

    def __init__(self, inner: Endpoint, tap: Tap) -> None:
        self.inner = inner
        self.local = inner.local
        self._sent = tap.sent

    def send(self, data: bytes, dest: Address) -> bool | None:
        # The inner result goes back to the worker: False (no connection) makes the core
        # answer 480 at once (`Proxy.undeliverable`), with a console open as without one.
        sent = self.inner.send(data, dest)
        if sent is not False:
            self._sent(data, dest, self.local)
        return sent

    def close(self) -> None:
        self.inner.close()


class Tappable(Protocol):
    def tap(self, tap: Tap | None) -> None: ...


class CaptureControl(Protocol):
    """A node's message capture as the REST API drives it (`view()` dicts as
    `CaptureSwitch.view` makes them; messages as `Captured.view`)."""

    async def enable(self, on: bool) -> dict[str, Any]:
        """Lease the capture for `LEASE` seconds (again), or stop it; the view after."""
        ...

    async def state(self) -> dict[str, Any]:
        """The view: whether it runs, until when, how many calls it holds, its bounds."""
        ...

    async def call_messages(self, call_id: str) -> list[dict[str, Any]] | None:
        """The messages captured of the call `call_id`, oldest first; None when none was."""
        ...


class CaptureSwitch:
    """The capture of one worker, on while leased: `lease()` turns it on (or keeps it on) for
    `seconds`; when that passes without another lease, the worker is untapped and what was
    captured is let go."""

    def __init__(self, worker: Tappable, capture: MessageCapture | None = None) -> None:
        self.worker = worker
        self.capture = capture if capture is not None else MessageCapture()
        self.until: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.until is not None

    def lease(self, seconds: float = LEASE) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self.worker.tap(self.capture)
        else:
            self._timer.cancel()
        self.until = time.time() + seconds
        self._timer = loop.call_later(seconds, self.stop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.worker.tap(None)
        self.until = None
        self.capture.clear()

    def view(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "until": self.until, "calls": len(self.capture),
                "max_calls": self.capture.max_dialogs,
                "max_messages": self.capture.max_messages}

    # -- CaptureControl: this worker's capture, in this process ------------------------------

    async def enable(self, on: bool) -> dict[str, Any]:
        if on:
            self.lease()
        else:
            self.stop()
        return self.view()

    async def state(self) -> dict[str, Any]:
        return self.view()

    async def call_messages(self, call_id: str) -> list[dict[str, Any]] | None:
        found = self.capture.messages(call_id)
        return None if found is None else [m.view() for m in found]
