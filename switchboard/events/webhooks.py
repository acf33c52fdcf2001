"""Webhook sinks: each event POSTed as signed JSON to an `http://` or `https://` URL.

The rules are plain functions of their inputs, time included: the signature (`sign`), which
answers are retried (`retryable`) and how long to wait before each retry (`Backoff`).
`WebhookSink` is the asyncio adapter around them: a bounded queue and one task per sink that
POSTs the events one at a time, in order, with aiohttp's client. `send` only enqueues, so a
slow or dead receiver costs the caller nothing but the events dropped when its queue is full,
each counted. This module does not know which events exist (`envelope` makes the bodies) nor
who is subscribed (`actors/eventbus`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp

from switchboard import __version__

from .sinks import SinkAddress, stop_writer

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Switchboard-Signature"

# The statistics a webhook sink counts, by attribute: delivered (a 2xx), retries (attempts
# after the first), dropped because the queue was full, refused by the receiver (a 3xx or
# 4xx: sending it again would not help), given up after the last retry.
WEBHOOK_STATISTICS: Final = {
    "evi:webhook_delivered_events": "delivered",
    "evi:webhook_retries": "retries",
    "evi:webhook_queue_full_drops": "queue_full",
    "evi:webhook_rejected_events": "rejected",
    "evi:webhook_failed_events": "failed",
}

Outcome = Literal["ok", "rejected", "retry"]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Switchboard-Signature` value: `t=TIMESTAMP,v1=HEX`, HEX the HMAC-SHA256 of
    `"{timestamp}.{body}"` with `secret`. The timestamp is signed with the body, so a
    receiver that refuses old timestamps refuses replays."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retryable(status: int) -> bool:
    """Whether an answer is worth sending the event again: a server error may pass, a
    client error (the receiver refused this event) will not."""
    return status >= 500


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `first` seconds before the first retry, times `factor` before
    each next one, never more than `cap`; `retries` retries at most. No jitter: a sink sends
    one request at a time, so its retries cannot pile up on the receiver."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    retries: int = 5

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        return min(self.cap, self.first * self.factor**retry)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """What every webhook sink of a node shares: the signing secret, how long one request may
    take (seconds), the retry schedule and how many events may wait in a sink's queue."""

    secret: bytes
    timeout: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    queue_size: int = 1024

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("a webhook needs a non-empty secret")
        if self.queue_size < 1:
            raise ValueError("a webhook queue holds at least one event")


class WebhookSink:
    """POSTs each event body to one URL, in order, signed, retrying as `Backoff` says.

    The clock gives the signature's UNIX time (a wall clock, as receivers compare it with
    theirs). Counters are attributes, named in `WEBHOOK_STATISTICS`; `dropped` is every
    event not delivered.
    """

    def __init__(
        self,
        address: SinkAddress,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not address.webhook:
            raise ValueError(f"{address} is not a webhook URL")
        self._address = address
        self._url = str(address)
        self._settings = settings
        self._clock = clock
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=settings.queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self.delivered = 0
        self.retries = 0
        self.queue_full = 0
        self.rejected = 0
        self.failed = 0

    @property
    def address(self) -> SinkAddress:
        return self._address

    @property
    def dropped(self) -> int:
        return self.queue_full + self.rejected + self.failed

    def counts(self) -> dict[str, int]:
        """This sink's counters under their statistic names."""
        return {name: getattr(self, attr) for name, attr in WEBHOOK_STATISTICS.items()}

    async def open(self) -> None:
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
            # One request at a time: a second connection would only let events overtake.
            connector=aiohttp.TCPConnector(limit=1),
            headers={"User-Agent": f"switchboard/{__version__}"},
        )
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"webhook {self._url}")

    def send(self, payload: bytes) -> None:
        if self._closed:
            self.queue_full += 1
            log.debug("webhook %s: closed, dropped an event", self._url)
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.queue_full += 1
            if self.queue_full == 1 or self.queue_full % 1000 == 0:
                log.warning("webhook %s: queue full, %d events dropped so far",
                            self._url, self.queue_full)

    async def close(self, *, flush_timeout: float = 0.5) -> None:
        """Stop the sink, giving queued events up to `flush_timeout` seconds to go out."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await stop_writer(self._queue, self._task, flush_timeout)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                await self._deliver(body)
            except Exception:  # the task must outlive any surprise, or the sink goes silent
                self.failed += 1
                log.exception("webhook %s: unexpected error", self._url)
            finally:
                self._queue.task_done()

    async def _deliver(self, body: bytes) -> None:
        backoff = self._settings.backoff
        retry = 0
        while True:
            outcome, why = await self._post(body)
            if outcome == "ok":
                self.delivered += 1
                if self._failing:
                    log.info("webhook %s: delivering again", self._url)
                    self._failing = False
                return
            if outcome == "rejected":
                self.rejected += 1
                log.warning("webhook %s: event refused (%s), not sent again", self._url, why)
                return
            if retry >= backoff.retries:
                self.failed += 1
                log.warning("webhook %s: event dropped after %d retries (%s)",
                            self._url, retry, why)
                return
            if not self._failing:
                log.warning("webhook %s: %s; retrying", self._url, why)
                self._failing = True
            self.retries += 1
            await asyncio.sleep(backoff.delay(retry))
            retry += 1

    async def _post(self, body: bytes) -> tuple[Outcome, str]:
        assert self._session is not None
        # Signed at each attempt: a retry carries a fresh timestamp, so it passes a
        # receiver's replay window however long the backoff was.
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._settings.secret, int(self._clock()), body),
        }
        try:
            async with self._session.post(self._url, data=body, headers=headers,
                                          allow_redirects=False) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return "retry", f"no answer within {self._settings.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return "retry", f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return "ok", str(status)
        return ("retry" if retryable(status) else "rejected"), f"HTTP {status}"
