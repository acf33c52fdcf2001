"""The worker: hosts one proxy core in the event loop and moves its input and output.

Inbound messages go straight into the core (the hot path: no queue, no copy); after each one
the worker sends what the core put in its outbox, publishes the dialog events, and re-arms a
single loop timer at the core's next deadline (aioquic's driver shape). An event is made into
its published form (name and parameters) only when somebody takes that event (`wanted`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any

from ..capture import Tap, TappedEndpoint
from ..events import E_DLG_STATE_CHANGED
from ..events.opensips import event_name, opensips_event
from ..hep import MirroredEndpoint
from ..sip.callops import CallOps
from ..sip.dialog import Dialog, DialogState, DialogStateChanged
from ..sip.operations import Operation
from ..sip.proxy import Event, Proxy
from ..sip.wire import Address, Datagram
from ..transport.base import Endpoint
from ..transport.tcp import TcpEndpoint
from ..transport.udp import UdpEndpoint
from ..transport.ws import WsEndpoint
from .dialog import DialogActor, dialog_info
from .listing import DialogFilter, DialogIndex
from .overload import OverloadMonitor, receive_queues

log = logging.getLogger(__name__)
# Failed authentications and bans, one JSON object each with `--log-format json`: what
# fail2ban and a SIEM read.
security_log = logging.getLogger("switchboard.security")

Publish = Callable[[str, dict[str, Any]], None]
LIST_SLICE = 500  # dialogs rendered for dialog:list between two turns of the loop (~10 ms)
TIMER_GRID = 0.01  # seconds: the core's timers run at most this late


class Worker:
    def __init__(self, proxy: Proxy, callops: CallOps, publish: Publish, *,
                 count: Callable[[Event], None] | None = None) -> None:
        self.proxy = proxy
        self.callops = callops
        self.publish = publish
        # Called with every event of the core, published or not (the call metrics).
        self.count = count
        # The event names somebody takes (`EventBus.wanted`, kept up to date by whoever
        # knows): the others are never made into their published form. None: publish all.
        self.wanted: frozenset[str] | None = None
        self.endpoints: dict[Address, Endpoint] = {}
        self.actors: dict[str, DialogActor] = {}
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Core time is the loop's monotonic clock; this maps it to wall time for display.
        self._wall_offset = time.time() - self._loop.time()
        # The receive queues in front of this worker's loop: its UDP listeners' sockets.
        self._udp_sockets: list[socket.socket] = []
        self.overload = OverloadMonitor(self._set_overloaded, queues=self._receive_queues,
                                        held=self._held)
        # Set when the workers of a node share its address: True when it handed the
        # message to the worker that owns it (`cluster/shared_port.py`).
        self.router: Callable[[bytes, Address, Address], bool] | None = None
        # The dialogs by number, for pages of them (made when first asked for one).
        self._index: DialogIndex | None = None
        # What every message received is copied to while a capture runs (`tap`).
        self._tap: Tap | None = None

    def _receive_queues(self) -> tuple[float, int]:
        return receive_queues(self._udp_sockets)

    def _held(self) -> int:
        """Dialogs and transactions: what the memory of this worker's calls grows with."""
        proxy = self.proxy
        return len(proxy.dialogs) + len(proxy.server_txns) + len(proxy.client_txns)

    def _set_overloaded(self, share: float) -> None:
        self.proxy.shed_fraction = share

    def now(self) -> float:
        return self._loop.time()

    def to_wall(self, t: float) -> float:
        return t + self._wall_offset

    def add_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.local] = endpoint
        inner = endpoint
        while isinstance(inner, (MirroredEndpoint, TappedEndpoint)):
            inner = inner.inner
        if isinstance(inner, UdpEndpoint) and inner.socket is not None:
            self._udp_sockets.append(inner.socket)
        if isinstance(inner, TcpEndpoint):
            inner.undelivered = self.undelivered
        if isinstance(inner, (TcpEndpoint, WsEndpoint)):
            inner.connection_closed = self.connection_closed

    def tap(self, tap: Tap | None) -> None:
        """Copy every message sent and received to `tap` (None: stop). The endpoints are
        wrapped and unwrapped, so untapped sending is as it was; `receive` looks at `_tap`
        (the compiled worker has no instance `__dict__` to shadow `receive` in)."""
        for local, endpoint in list(self.endpoints.items()):
            inner = endpoint.inner if isinstance(endpoint, TappedEndpoint) else endpoint
            self.endpoints[local] = inner if tap is None else TappedEndpoint(inner, tap)
        self._tap = tap

    # -- the hot path ---------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, local: Address) -> None:
        tap = self._tap
        if tap is not None:  # copied before it is handled: a request shows before its answers
            tap.received(data, source, local)
        router = self.router
        if router is not None and router(data, source, local):
            return  # handed to the worker of this node that owns it
        self.proxy.receive(data, source, local, self._loop.time())
        self.flush()

    def receive_handed(self, data: bytes, source: Address, local: Address) -> None:
        """A message another worker of this node received and handed over, as this one owns
        it: into the core as if received here, never routed again."""
        self.proxy.receive(data, source, local, self._loop.time())
        self.flush()

    def flush(self) -> None:
        proxy = self.proxy
        if proxy.outbox:
            endpoints = self.endpoints
            # The core may answer an undeliverable request here (480 upstream): the answer
            # joins the outbox being walked and goes out in this same pass.
            for dgram in proxy.outbox:
                endpoint = endpoints.get(dgram.local)
                if endpoint is None:
                    proxy.undeliverable(dgram, self._loop.time())
                    continue
                try:
                    if endpoint.send(dgram.data, dgram.dest) is False:
                        proxy.undeliverable(dgram, self._loop.time())
                except Exception:  # one bad destination must not stop every send after it
                    log.exception("sending to %s failed", dgram.dest)
            proxy.outbox.clear()
        if proxy.events:
            count, wanted = self.count, self.wanted
            for ev in proxy.events:
                if count is not None:
                    count(ev)
                if isinstance(ev, DialogStateChanged):
                    if ev.new_state is DialogState.DELETED:
                        self.actors.pop(ev.dialog_id, None)
                    if wanted is not None and E_DLG_STATE_CHANGED not in wanted:
                        continue
                elif wanted is not None and event_name(ev) not in wanted:
                    continue
                self.publish(*opensips_event(ev))
            proxy.events.clear()
        if proxy.security:
            for failure in proxy.security:
                security_log.warning(
                    "%s from %s: failed authentication as %r%s", failure.method,
                    failure.source, failure.user,
                    ", source banned" if failure.banned else "",
                    extra={"event": "source_banned" if failure.banned else "auth_failed",
                           "source": failure.source, "user": failure.user,
                           "method": failure.method})
            proxy.security.clear()
        deadline = proxy.next_deadline()
        if deadline is None:
            return
        # Wake on a 10 ms grid: at 1,500 calls/s the core has thousands of deadlines a
        # second, a few hundred microseconds apart; one wake-up runs all that fell due.
        deadline = math.ceil(deadline / TIMER_GRID) * TIMER_GRID
        if self._timer_at is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def undelivered(self, data: bytes, dest: Address, local: Address) -> None:
        """An endpoint took `data` but could not deliver it after all (the connection it
        waited for did not open): the core fails the request's transaction now and the
        answer (480 upstream) goes out at once."""
        self.proxy.undeliverable(Datagram(data, dest, local), self._loop.time())
        self.flush()

    def connection_closed(self, peer: Address) -> None:
        """A TCP, TLS or WebSocket connection ended: the bindings registered over it go,
        since nothing else reaches them (RFC 5626 §5.3, RFC 7118 §6)."""
        self.proxy.location.drop_flow(peer, self._loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.proxy.handle_timers(self._loop.time())
        except Exception:
            log.exception("timer handling failed")
        self.flush()

    # -- operations on dialogs --------------------------------------------------------------

    def find_dialog(self, key: str) -> Dialog | None:
        dialog = self.proxy.dialogs.find(key)
        return dialog if dialog is not None and dialog.active else None

    async def operate(self, op: Operation) -> None:
        """Carry out `op` on the live dialog it names, through that dialog's mailbox; raises
        `Refused` when there is none or the dialog refuses."""
        dialog = self.callops.dialog_of(op)
        actor = self.actors.get(dialog.id)
        if actor is None:
            actor = self.actors[dialog.id] = DialogActor(dialog, self._apply)
        answer = actor.ask(op)
        self.flush()
        await answer

    def _apply(self, dialog: Dialog, op: Operation) -> None:
        self.callops.apply(dialog, op, self._loop.time())

    async def list_dialogs(self, call_id: str | None = None,
                           from_tag: str | None = None) -> list[dict[str, Any]]:
        """`dialog:list` objects; a long list is built in slices so calls keep flowing."""
        if call_id is not None:
            found = self.proxy.dialogs.by_call_id(call_id)
            candidates = [found] if found is not None else []
        else:
            candidates = list(self.proxy.dialogs)
        out = []
        for index, dialog in enumerate(candidates):
            if index and index % LIST_SLICE == 0:
                await asyncio.sleep(0)  # let SIP traffic through between slices
            if not dialog.active:
                continue
            if call_id is not None and dialog.call_id != call_id:
                continue
            if from_tag is not None and dialog.caller.tag != from_tag:
                continue
            out.append(dialog_info(dialog, self.to_wall))
        return out

    async def list_page(self, after: int | None, limit: int, wanted: DialogFilter
                        ) -> tuple[list[dict[str, Any]], int | None]:
        """`dialog:list` objects of the first `limit` live dialogs numbered (`db_id`) above
        `after` that `wanted` matches, and the next page's cursor (`listing.DialogIndex`):
        what the dialogs not shown cost is a bisection."""
        if self._index is None:
            self._index = DialogIndex(self.proxy.dialogs)
        return await self._index.page(after, limit, wanted,
                                      lambda d: dialog_info(d, self.to_wall))

    def close(self) -> None:
        self.overload.close()
        if self._timer is not None:
            self._timer.cancel()
        for endpoint in self.endpoints.values():
            endpoint.close()

