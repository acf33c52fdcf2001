"""The location table of a node whose workers share one address: each worker keeps a copy.

The kernel gives a REGISTER to one worker and the calls toward its user to any (their
Call-IDs hash over the workers), so every worker must know every binding of the node, as
Kamailio's and OpenSIPS's children share one location table. A change a worker's registrar
makes (`Location.on_change`) goes to the node's other workers over the hand-off channel
(`BINDINGS`, msgpack as `switchboard.readout` packs it) and they apply it to their copy
(`Location.apply`); a worker that starts asks one of them for the whole table (`TABLE`).
Copies expire by themselves, and a connection that ends is told to every worker by
`SharedPort` (`CLOSED`).

A binding over a connection (TCP, TLS, WebSocket) is reached over that connection, which
lives in the worker that accepted it: each change names that worker (its `holder`), and the
others send toward the binding through it (`SharedPort.relay`), as they answer any message
that came over another worker's connection.

Knows nothing of Ray and of SIP messages: changes, addresses and the channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from ..readout import pack as _pack
from ..readout import unpack as _unpack
from ..sip.registrar import BindingChange, Location
from ..sip.wire import Address
from ..transport.handoff import BINDINGS, TABLE, HandoffChannel

log = logging.getLogger(__name__)

TABLE_CHUNK: Final = 500  # bindings per frame of a table sent to a worker that starts
# What may wait unsent toward a starting worker before the next part of a table is written:
# the channel gives a peer up at `handoff.MAX_BACKLOG`.
TABLE_BACKLOG: Final = 1024 * 1024
NO_HOLDER: Final = -1


def _address(address: Address) -> list[Any]:
    return [address.transport, address.host, address.port]


def pack(changes: list[tuple[BindingChange, int, int]]) -> bytes:
    """(change, origin, holder) triples as one frame's message: `origin` the worker that
    took the REGISTER, `holder` the one whose connection reaches the binding (or
    `NO_HOLDER`), both as worker numbers of the node."""
    return _pack([
        [c.key, c.contact, c.expires_in, c.call_id, c.cseq, _address(c.source),
         _address(c.local), c.q, c.reached_only_over, origin, holder]
        for c, origin, holder in changes])


def unpack(data: bytes, me: int) -> list[tuple[BindingChange, int]]:
    """(change, holder) pairs of what `pack` made, as worker `me` keeps them: its own
    bindings (back in a table after it restarted) with origin -1. Raises ValueError,
    TypeError or msgpack's errors on a bad message."""
    out = []
    for row in _unpack(data):
        key, contact, expires_in, call_id, cseq, source, local, q, only, origin, holder = row
        origin = int(origin)
        out.append((BindingChange(str(key), str(contact), float(expires_in), str(call_id),
                                  int(cseq), Address(*source), Address(*local), float(q),
                                  bool(only), -1 if origin == me else origin), int(holder)))
    return out


class NodeBindings:
    """One worker's side: its registrar's changes out to the others, theirs into its copy.

    `holder_of(source)` names the worker whose connection a REGISTER from `source` came
    over; `learn(change, worker)` tells `SharedPort` that another worker's change named
    `worker` as the one whose connection reaches its binding.
    """

    def __init__(self, me: int, channel: HandoffChannel, location: Location,
                 now: Callable[[], float], holder_of: Callable[[Address], int],
                 learn: Callable[[BindingChange, int], None]) -> None:
        self.me = me
        self.channel = channel
        self.location = location
        self.now = now
        self.holder_of = holder_of
        self.learn = learn
        self.sent = 0  # changes sent, once for each worker told
        self.applied = 0  # changes of other workers applied here
        self.tables = 0  # whole tables sent to workers that started
        # A worker being sent the table → the changes made meanwhile, sent after it.
        self._sending: dict[int, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        location.on_change = self.changed

    def _row(self, change: BindingChange) -> tuple[BindingChange, int, int]:
        origin = self.me if change.origin < 0 else change.origin
        source = change.source
        holder = self.holder_of(source) if source.reliable else NO_HOLDER
        return change, origin, holder

    def changed(self, change: BindingChange) -> None:
        """A REGISTER changed this worker's table: tell every other worker."""
        data = pack([self._row(change)])
        channel = self.channel
        for worker in channel.members():
            if worker == self.me:
                continue
            waiting = self._sending.get(worker)
            if waiting is not None:
                waiting.append(data)
            elif channel.tell(worker, BINDINGS, data):
                self.sent += 1

    def received(self, sender: int, data: bytes) -> None:
        """Changes another worker sent (one, or a part of its table): into the copy."""
        try:
            rows = unpack(data, self.me)
        except Exception as exc:  # a bad frame is dropped, the channel goes on
            log.warning("worker %d: bad bindings from worker %d dropped: %s", self.me, sender,
                        exc)
            return
        now = self.now()
        for change, holder in rows:
            self.location.apply(change, now)
            if holder not in (NO_HOLDER, self.me) and change.expires_in > 0:
                self.learn(change, holder)
            self.applied += 1

    def ask_table(self) -> bool:
        """Ask one other worker of the node for the whole table (this one just started);
        False when there is none to ask."""
        for worker in self.channel.members():
            if worker != self.me and self.channel.tell(worker, TABLE):
                return True
        return False

    def send_table(self, worker: int) -> None:
        """`worker` started: the table as it is now, in parts, then the changes made while
        the parts were written, so that it sees them in the order they were made."""
        if worker == self.me or worker in self._sending:
            return
        rows = [self._row(change) for change in self.location.table(self.now())]
        self._sending[worker] = []
        task = asyncio.get_running_loop().create_task(self._send_table(worker, rows))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_table(self, worker: int, rows: list[tuple[BindingChange, int, int]]
                          ) -> None:
        channel = self.channel
        try:
            for at in range(0, len(rows), TABLE_CHUNK):
                while channel.backlog(worker) > TABLE_BACKLOG:
                    await asyncio.sleep(0.01)
                if not channel.tell(worker, BINDINGS, pack(rows[at:at + TABLE_CHUNK])):
                    return  # it went away again: it asks afresh when it is back
            for data in self._sending[worker]:
                if not channel.tell(worker, BINDINGS, data):
                    return
                self.sent += 1
            self.tables += 1
        finally:
            self._sending.pop(worker, None)

    def statistics(self) -> dict[str, int]:
        return {"handoff:binding_updates_sent": self.sent,
                "handoff:binding_updates_applied": self.applied,
                "handoff:binding_tables_sent": self.tables}

    def close(self) -> None:
        if self.location.on_change == self.changed:
            self.location.on_change = None
        for task in self._tasks:
            task.cancel()
