"""Event sinks: where event bytes go, named by OpenSIPS-style socket strings.

`udp:IP:PORT` sends one datagram per event (OpenSIPS `event_datagram`); `tcp:IP:PORT` writes
newline-delimited JSON over one persistent connection (OpenSIPS `event_stream`, without its
`/method` suffix and reliable mode); an `http://` or `https://` URL is a webhook (`webhooks`).
A sink never blocks and never raises into its caller: what cannot be delivered is dropped with
a log line and counted. This module does not know which events exist or who is subscribed
(`subscriptions`, `actors/eventbus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    from .webhooks import WebhookSettings

log = logging.getLogger(__name__)

SinkTransport = Literal["udp", "tcp", "http", "https"]

WEBHOOK_TRANSPORTS: Final = ("http", "https")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# RFC 1123 host names: letters, digits and hyphens between dots.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?\Z")

# OpenSIPS event_datagram refuses payloads above this size; so do we, rather than fragmenting.
MAX_DATAGRAM: Final = 65457


@dataclass(frozen=True, slots=True)
class SinkAddress:
    """A parsed sink socket string. `host` is an IP literal, without IPv6 brackets, or (for a
    webhook) a host name; `target` is a webhook's path and query, empty for the others."""

    transport: SinkTransport
    host: str
    port: int
    target: str = ""

    @property
    def webhook(self) -> bool:
        return self.transport in WEBHOOK_TRANSPORTS

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.webhook:
            return f"{self.transport}:{host}:{self.port}"
        port = "" if self.port == _DEFAULT_PORTS[self.transport] else f":{self.port}"
        return f"{self.transport}://{host}{port}{self.target}"


def parse_sink(socket: str) -> SinkAddress:
    """Parse `udp:IP:PORT` or `tcp:IP:PORT` (IPv6 as `udp:[::1]:PORT`), or a webhook's
    `http://HOST[:PORT]/PATH` or `https://...` URL.

    Raises ValueError with a message that says what is wrong with the string.
    """
    text = socket.strip()
    if text[:8].lower().startswith(("http://", "https://")):
        return _parse_webhook(socket, text)
    transport, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"bad event socket {socket!r}: expected udp:IP:PORT or tcp:IP:PORT")
    if transport not in ("udp", "tcp"):
        raise ValueError(
            f"bad event socket {socket!r}: unsupported transport {transport!r} "
            "(expected udp or tcp)"
        )
    if "/" in rest:
        raise ValueError(f"bad event socket {socket!r}: a /path or /method suffix is not supported")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"bad event socket {socket!r}: expected [IPv6]:PORT after transport")
        port_text = port_text[1:]
        version = 6
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad event socket {socket!r}: expected IP:PORT after the transport")
        if ":" in host:
            raise ValueError(f"bad event socket {socket!r}: put an IPv6 address in brackets")
        version = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad event socket {socket!r}: {host!r} is not an IP address") from None
    if ip.version != version:
        raise ValueError(f"bad event socket {socket!r}: {host!r} is not an IPv{version} address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad event socket {socket!r}: port must be a number in 1..65535")
    kind: SinkTransport = "udp" if transport == "udp" else "tcp"
    return SinkAddress(kind, str(ip), int(port_text))


def _parse_webhook(socket: str, text: str) -> SinkAddress:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(
            f"bad webhook URL {socket!r}: spaces and control characters are not allowed")
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"bad webhook URL {socket!r}: {exc}") from None
    scheme = url.scheme.lower()
    if url.username is not None or url.password is not None:
        # The URL is shown by evi:list and in logs; requests are authenticated by signature.
        raise ValueError(f"bad webhook URL {socket!r}: credentials in the URL are not supported")
    if url.fragment or text.endswith("#"):
        raise ValueError(f"bad webhook URL {socket!r}: a #fragment is not sent to a server")
    host = (url.hostname or "").lower()
    if not host:
        raise ValueError(f"bad webhook URL {socket!r}: no host")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if url.netloc.startswith("[") or not _HOSTNAME.match(host):
            raise ValueError(f"bad webhook URL {socket!r}: {host!r} is not a host name "
                             "or an IP address") from None
    if port == 0:
        raise ValueError(f"bad webhook URL {socket!r}: port must be a number in 1..65535")
    target = url.path or "/"
    if url.query:
        target += f"?{url.query}"
    kind: SinkTransport = "https" if scheme == "https" else "http"
    return SinkAddress(kind, host, port or _DEFAULT_PORTS[kind], target)


class Sink(Protocol):
    """A destination for event payloads."""

    @property
    def address(self) -> SinkAddress: ...

    @property
    def dropped(self) -> int:
        """Events this sink did not deliver since it was opened."""
        ...

    def send(self, payload: bytes) -> None:
        """Queue or send one event; never blocks, never raises."""
        ...

    async def close(self) -> None: ...


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, address: SinkAddress) -> None:
        self._address = address

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected UDP socket lands here: the subscriber is gone
        # for now, but may come back, so the sink stays open.
        log.warning("event sink %s: %s", self._address, exc)


class UdpSink:
    """One datagram per event, over a connected asyncio datagram endpoint."""

    def __init__(self, address: SinkAddress) -> None:
        self._address = address
        self._transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    @property
    def address(self) -> SinkAddress:
        return self._address

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self._address),
            remote_addr=(self._address.host, self._address.port),
        )
        self._transport = transport

    def send(self, payload: bytes) -> None:
        if len(payload) > MAX_DATAGRAM:
            self.dropped += 1
            log.warning(
                "event sink %s: dropped a %d-byte event (datagram limit %d)",
                self._address,
                len(payload),
                MAX_DATAGRAM,
            )
            return
        if self._transport is None or self._transport.is_closing():
            self.dropped += 1
            log.warning("event sink %s: dropped an event, sink is not open", self._address)
            return
        try:
            self._transport.sendto(payload)
        except OSError as exc:
            self.dropped += 1
            log.warning("event sink %s: dropped an event: %s", self._address, exc)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class TcpSink:
    """Newline-delimited JSON over one persistent TCP connection.

    `send` only enqueues; a writer task connects, writes and reconnects. When the peer cannot
    be reached an event is dropped (first drop of a streak logged as a warning) and a new
    connection is tried at most every `retry_interval` seconds, so a dead subscriber costs
    nothing but log lines.
    """

    def __init__(
        self,
        address: SinkAddress,
        *,
        queue_size: int = 4096,
        connect_timeout: float = 2.0,
        write_timeout: float = 5.0,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = address
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._peer_closed = False
        self._next_connect = 0.0
        self._closed = False
        self._drop_streak = 0
        # Events dropped since the sink was opened (for statistics and tests).
        self.dropped = 0

    @property
    def address(self) -> SinkAddress:
        return self._address

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._peer_closed

    async def open(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"event-sink {self._address}"
            )

    def send(self, payload: bytes) -> None:
        if self._closed:
            self._drop("sink is closed")
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._drop("send queue full")

    async def close(self, *, flush_timeout: float = 0.5) -> None:
        """Stop the sink, giving queued events up to `flush_timeout` seconds to go out."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await stop_writer(self._queue, self._task, flush_timeout)
            self._task = None
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._deliver(payload + b"\n")
            except Exception:  # the writer must outlive any surprise, or the sink goes silent
                log.exception("event sink %s: unexpected error", self._address)
            finally:
                self._queue.task_done()

    async def _deliver(self, line: bytes) -> None:
        # Two tries: a connection that died since the last event is only noticed on write.
        for _ in range(2):
            writer = await self._connection()
            if writer is None:
                break
            try:
                writer.write(line)
                await asyncio.wait_for(writer.drain(), self._write_timeout)
            except (OSError, TimeoutError) as exc:
                log.info("event sink %s: connection lost: %s", self._address, exc)
                await self._disconnect()
                continue
            if self._drop_streak:
                log.info(
                    "event sink %s: delivering again after %d dropped events",
                    self._address,
                    self._drop_streak,
                )
                self._drop_streak = 0
            return
        self._drop("peer unreachable")

    async def _connection(self) -> asyncio.StreamWriter | None:
        if self._writer is not None and not self._peer_closed and not self._writer.is_closing():
            return self._writer
        await self._disconnect()
        now = self._clock()
        if now < self._next_connect:
            return None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._address.host, self._address.port),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self._next_connect = now + self._retry_interval
            if not self._drop_streak:
                log.warning("event sink %s: cannot connect: %s", self._address, exc)
            return None
        self._writer = writer
        self._peer_closed = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch(reader))
        return writer

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        # Subscribers do not talk back; reading only tells us when the peer has gone away, so
        # the next event reconnects instead of vanishing into a half-closed socket.
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        self._peer_closed = True

    async def _disconnect(self) -> None:
        writer, self._writer = self._writer, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self._drop_streak += 1
        if self._drop_streak == 1:
            log.warning("event sink %s: dropping events: %s", self._address, reason)
        else:
            log.debug("event sink %s: dropped an event: %s", self._address, reason)


async def stop_writer(queue: asyncio.Queue[Any], task: asyncio.Task[None],
                      flush_timeout: float) -> None:
    """Give a sink's writer task up to `flush_timeout` seconds to send what is queued, then
    stop it. `join()` also waits for the event being written right now."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(queue.join(), flush_timeout)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def open_sink(address: SinkAddress, webhook: WebhookSettings | None = None) -> Sink:
    """Create and open the sink for `address`; a webhook needs its `webhook` settings (the
    secret it signs with). Raises ValueError for a webhook without them."""
    if address.webhook:
        # Imported here: `webhooks` builds on this module's addresses.
        from .webhooks import WebhookSink

        if webhook is None:
            raise ValueError(f"event sink {address}: a webhook needs [events] webhook_secret")
        hook = WebhookSink(address, webhook)
        await hook.open()
        return hook
    sink: UdpSink | TcpSink = UdpSink(address) if address.transport == "udp" else TcpSink(address)
    await sink.open()
    return sink
