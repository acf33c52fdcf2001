"""One-at-a-time delivery: the property that makes an object an actor.

`Mailbox.tell` queues a message; the handler runs each message to completion before the next
one starts, even when handling one message tells the same actor another (it is queued, not
nested). In one event loop this costs a deque append and pop per message.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

M = TypeVar("M")
log = logging.getLogger(__name__)


class Mailbox(Generic[M]):
    __slots__ = ("_busy", "_handler", "_queue")

    def __init__(self, handler: Callable[[M], None]) -> None:
        self._handler = handler
        self._queue: deque[M] = deque()
        self._busy = False

    def tell(self, message: M) -> None:
        self._queue.append(message)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                msg = self._queue.popleft()
                try:
                    self._handler(msg)
                except Exception:  # an actor survives a failed message
                    log.exception("actor failed on %r", msg)
        finally:
            self._busy = False

    def __len__(self) -> int:
        return len(self._queue)
