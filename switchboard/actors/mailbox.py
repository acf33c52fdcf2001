"""One-at-a-time delivery: the property that makes an object an actor.

`Mailbox.ask` queues a message and returns the future of its answer: the handler's return, or
what it raised. The handler runs each message to completion before the next one starts, even
when handling one message asks the same actor another (it is queued, not nested). In one event
loop this costs a deque append and pop and a future per message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

M = TypeVar("M")


class Mailbox(Generic[M]):
    __slots__ = ("_busy", "_handler", "_queue")

    def __init__(self, handler: Callable[[M], None]) -> None:
        self._handler = handler
        self._queue: deque[tuple[M, asyncio.Future[None]]] = deque()
        self._busy = False

    def ask(self, message: M) -> asyncio.Future[None]:
        """Deliver `message`; the future is done once it was handled (or refused)."""
        answer = asyncio.get_running_loop().create_future()
        self._queue.append((message, answer))
        if self._busy:
            return answer
        self._busy = True
        try:
            while self._queue:
                msg, reply = self._queue.popleft()
                try:
                    self._handler(msg)
                except Exception as exc:  # the asker is told; the actor goes on
                    reply.set_exception(exc)
                else:
                    reply.set_result(None)
        finally:
            self._busy = False
        return answer

    def __len__(self) -> int:
        return len(self._queue)
