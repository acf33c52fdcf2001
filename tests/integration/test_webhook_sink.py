"""The webhook sink and the bus against a real aiohttp receiver on 127.0.0.1 in the same loop:
signatures, order, retries after 5xx and timeouts, no retry after 4xx, the bounded queue, and
the counters the bus keeps for /metrics; an HTTPS receiver whose certificate no trusted CA
signed gets nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from switchboard.actors.eventbus import EventBus
from switchboard.events.sinks import parse_sink
from switchboard.events.webhooks import SIGNATURE_HEADER, Backoff, WebhookSettings, WebhookSink
from tests.support.certs import make_pki
from tests.support.ports import free_port
from tests.support.webhooks import verify

SECRET = b"hook-secret"
FAST = Backoff(first=0.01, cap=0.05, retries=3)


class Receiver:
    """Answers each request with the next of `statuses` (200 once they run out); `delay`
    seconds before answering the first `slow` requests; records (status, body, signature)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.slow = 0
        self.delay = 0.0
        self.seen: list[tuple[int | None, bytes, str]] = []
        self.arrived = asyncio.Condition()
        self.release = asyncio.Event()
        self.hang = False
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if self.hang:
            await self._note(None, body, signature)
            await self.release.wait()
            return web.Response(status=503)
        if self.slow:
            self.slow -= 1
            await self._note(None, body, signature)
            await asyncio.sleep(self.delay)
            return web.Response(status=200)
        status = self.statuses.pop(0) if self.statuses else 200
        await self._note(status, body, signature)
        return web.Response(status=status)

    async def _note(self, status: int | None, body: bytes, signature: str) -> None:
        async with self.arrived:
            self.seen.append((status, body, signature))
            self.arrived.notify_all()

    async def wait(self, count: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.seen) >= count), 10)

    def answered(self, status: int) -> list[bytes]:
        return [body for s, body, _ in self.seen if s == status]


async def _serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "http" if ssl_context is None else "https"
    hooks.url = f"{scheme}://127.0.0.1:{port}/hook"
    yield hooks
    hooks.release.set()
    await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async for hooks in _serve():
        yield hooks


@pytest.fixture
async def untrusted_receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    """An HTTPS receiver with a self-signed certificate: in no CA store the sink trusts."""
    cert = make_pki(tmp_path / "pki").self_signed("hooks")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.certificate, cert.private_key)
    async for hooks in _serve(context):
        yield hooks


async def _sink(url: str, **settings: object) -> WebhookSink:
    options: dict[str, object] = {"backoff": FAST, **settings}
    sink = WebhookSink(parse_sink(url), WebhookSettings(SECRET, **options))  # type: ignore[arg-type]
    await sink.open()
    return sink


async def _drained(sink: WebhookSink, count: int) -> None:
    for _ in range(1000):
        if sink.delivered + sink.dropped >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {count} events handled: {sink.counts()}")


async def test_events_go_in_order_signed_and_after_503s(receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    sink = await _sink(receiver.url)
    bodies = [json.dumps({"n": n}).encode() for n in range(5)]
    for body in bodies:
        sink.send(body)
    await _drained(sink, 5)
    assert receiver.answered(200) == bodies
    # The first event was sent three times, each signed, the same body every time.
    assert [b for _, b, _ in receiver.seen[:3]] == [bodies[0]] * 3
    for _, body, signature in receiver.seen:
        assert verify(SECRET, signature, body)
        assert not verify(b"another secret", signature, body)
    assert (sink.delivered, sink.retries, sink.dropped) == (5, 2, 0)
    await sink.close()


async def test_a_4xx_is_not_retried_and_the_next_event_goes(receiver: Receiver) -> None:
    receiver.statuses = [404]
    sink = await _sink(receiver.url)
    sink.send(b'{"n":0}')
    sink.send(b'{"n":1}')
    await _drained(sink, 2)
    assert [(s, b) for s, b, _ in receiver.seen] == [(404, b'{"n":0}'), (200, b'{"n":1}')]
    assert (sink.rejected, sink.retries, sink.delivered) == (1, 0, 1)
    await sink.close()


async def test_a_timeout_is_retried(receiver: Receiver) -> None:
    receiver.slow, receiver.delay = 1, 5.0
    sink = await _sink(receiver.url, timeout=0.2)
    sink.send(b'{"n":0}')
    await _drained(sink, 1)
    assert [b for _, b, _ in receiver.seen] == [b'{"n":0}', b'{"n":0}']
    assert (sink.retries, sink.delivered) == (1, 1)
    await sink.close()


async def test_an_unreachable_webhook_is_given_up_after_its_retries() -> None:
    sink = await _sink(f"http://127.0.0.1:{free_port('tcp')}/hook")
    sink.send(b'{"n":0}')
    await _drained(sink, 1)
    assert (sink.failed, sink.retries, sink.delivered) == (1, FAST.retries, 0)
    await sink.close()


async def test_a_hanging_webhook_fills_its_queue_then_drops(receiver: Receiver) -> None:
    receiver.hang = True
    sink = await _sink(receiver.url, queue_size=2, timeout=60.0)
    sink.send(b'{"n":0}')
    await receiver.wait(1)  # in flight, out of the queue
    for n in range(1, 6):
        sink.send(b'{"n":%d}' % n)
    assert (sink.queue_full, sink.dropped) == (3, 3)
    await sink.close(flush_timeout=0.05)
    assert len(receiver.seen) == 1
    sink.send(b"late")
    assert sink.queue_full == 4


async def test_the_bus_signs_for_webhooks_and_keeps_their_counts(receiver: Receiver) -> None:
    receiver.statuses = [503]
    bus = EventBus(webhook=WebhookSettings(SECRET, backoff=FAST))
    await bus.subscribe("E_CALL_HOLD", receiver.url, 60)
    bus.publish("E_CALL_HOLD", {"callid": "X", "state": "start"})
    bus.publish("E_CALL_TRANSFER", {"callid": "X"})  # not subscribed
    bus.publish("E_CALL_HOLD", {"callid": "X", "state": "ok"})
    await receiver.wait(3)
    bodies = [json.loads(b) for b in receiver.answered(200)]
    assert [(b["event"], b["params"]["state"]) for b in bodies] == [
        ("E_CALL_HOLD", "start"), ("E_CALL_HOLD", "ok")]
    assert len({b["id"] for b in bodies}) == 2
    # Unsubscribing closes the sink; what it counted stays in the statistics.
    await bus.subscribe("E_CALL_HOLD", receiver.url, 0)
    assert bus.statistics() == {
        "evi:dropped_events": 0, "evi:subscriptions": 0,
        "evi:webhook_delivered_events": 2, "evi:webhook_retries": 1,
        "evi:webhook_queue_full_drops": 0, "evi:webhook_rejected_events": 0,
        "evi:webhook_failed_events": 0,
    }
    await bus.close()


async def test_an_https_receiver_with_an_untrusted_certificate_gets_nothing(
    untrusted_receiver: Receiver, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="switchboard.events.webhooks")
    sink = await _sink(untrusted_receiver.url)
    sink.send(b'{"n":0}')
    sink.send(b'{"n":1}')
    await _drained(sink, 2)
    # Every attempt failed in the TLS handshake, before a request was sent.
    assert untrusted_receiver.seen == []
    assert "certificate verify failed" in caplog.text
    assert (sink.failed, sink.retries, sink.delivered) == (2, 2 * FAST.retries, 0)
    await sink.close()
