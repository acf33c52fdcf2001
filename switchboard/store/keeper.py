"""Keeping one worker's confirmed dialogs in a store, behind the hot path, and bringing them
back into a fresh worker.

On the message path nothing happens but the core's set add (`Proxy.track_changes`). Every
`interval` seconds the keeper takes the changed dialogs (`Proxy.take_dirty`: snapshots of
the confirmed ones, ids of the ended ones), notes which of them have a transfer in flight,
and hands the batch to the store in a thread of its own: one write in flight at a time.
When a write fails (the store is down; an idle node pings it every second to know) the
node goes on in memory only, with one log line and `store:available` at 0; the changes
are not kept, and once the store answers again every confirmed dialog is written in one
batch that replaces what it holds, with the route secret in use. A node that started
while the store did not answer (`wait_for_store`) is in that state from the start; when
the store answers, what it holds is restored first (the calls of the node that ran
before), then everything is written. Knows the worker and the call operations; the store
behind it is any `DialogStore`.

A transfer is not resumed after a restart (its REFER transaction and NOTIFY subscription
were in the old process): a dialog that comes back with one in flight reports it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from ..actors.worker import Worker
from ..sip.dialog import Dialog
from ..sip.events import TransferEnded
from ..sip.replication import RESTORABLE
from .base import DialogStore, StoreBatch, StoredDialog, StoreError, StoreUnavailable, Transfer

log = logging.getLogger(__name__)

T = TypeVar("T")

# The status of a transfer that was in flight when the node stopped (E_CALL_TRANSFER fail).
RESTARTED: Final = "500 Restarted"
# Seconds between two pings of the store while nothing changes.
IDLE_LOOK: Final = 1.0
# The longest wait, in seconds, between two catch-ups that failed although the store
# answered its ping (a full disk, a Redis at its memory limit): each one snapshots every
# confirmed dialog on the loop, which must not happen every interval.
CATCH_UP_BACKOFF: Final = 10.0
# Dialogs restored or snapshotted in one go on a running node, before letting messages in.
CHUNK: Final = 1000


class DialogKeeper:
    def __init__(self, store: DialogStore, worker: Worker, interval: float,
                 clock: Callable[[], float] = time.time, route_secret: str = "", *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        # The Record-Route key the store gave us ("" when the configuration sets it): a
        # catch-up writes it again.
        self.route_secret = route_secret
        self.worker = worker
        self.interval = interval
        self.clock = clock
        # Statistics: batches written, writes that failed, dialogs restored at start.
        self.writes = 0
        self.failures = 0
        self.restored = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="switchboard-store")
        self._pending = StoreBatch()  # what is still to write (the restore's deletions)
        # Dialog id -> the transfer in flight its stored row names.
        self._transfers: dict[str, Transfer] = {}
        self._task: asyncio.Task[None] | None = None
        # A write failed: until one succeeds, the store may hold anything (it may have come
        # back empty), so the next write is a catch-up; `store:available` is 0 meanwhile.
        self._failing = False
        self._catch_up = False  # the next write must be one (set after a failure too)
        # The node started without the store: what it holds is to be restored when it answers.
        self._unread = False
        self._read_error = ""  # the last reason the store could not be used (logged once)
        self.monotonic = monotonic
        self._next_look = monotonic() + IDLE_LOOK  # an idle node's next ping
        # After a catch-up that failed: not before this time, and the wait after the next.
        self._catch_up_at = 0.0
        self._catch_up_wait = 0.0
        worker.proxy.track_changes()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- start: reading back ------------------------------------------------------------------

    def restore(self, stored: list[StoredDialog]) -> int:
        """Put the stored dialogs into the worker's core (at start, before the worker serves
        a message: no await in here; a node that started without its store, once it
        answers). A transfer that was in flight is reported failed;
        rows that do not come back are deleted with the next write. Answers how many came
        back."""
        worker = self.worker
        proxy = worker.proxy
        now, wall = worker.now(), self.clock()
        pending = self._pending
        for item in stored:
            snapshot = item.snapshot
            dialog_id = snapshot.get("id")
            try:
                dialog = proxy.restore_dialog(snapshot, now, max(0.0, wall - item.taken))
            except ValueError as exc:
                log.warning("stored dialog %s not restored: %s", dialog_id, exc)
                dialog = None
            if dialog is None:
                if isinstance(dialog_id, str):
                    pending.dropped.append(dialog_id)
                continue
            self.restored += 1
            if item.transfer is not None:
                leg, transfer_callid, destination = item.transfer
                proxy.events.append(TransferEnded(dialog.call_id, leg, transfer_callid,
                                                  destination, False, RESTARTED))
                pending.transfers.append((dialog.id, None))
        worker.flush()  # publishes the failed transfers, arms the restored lifetimes
        return self.restored

    def wait_for_store(self) -> None:
        """The store did not answer at start: serve from memory only (`store:available` 0)
        until it does; then restore the dialogs it holds and write every confirmed one.
        Instead of `restore`, before `start`."""
        self._failing = self._catch_up = self._unread = True

    async def _read_late(self) -> bool:
        """The store answers after a start without it: its dialogs come back into the
        running core (those whose id or Call-ID is not in use here), and the route secret
        it holds, if another, is to be replaced by the one in use. False when the reading
        failed (tried again at the next interval)."""
        try:
            kept = (await self._call(self.store.route_secret, lambda: self.route_secret)
                    if self.route_secret else "")
            stored = await self._call(self.store.load)
        except StoreError as exc:
            self._unusable(exc)
            return False
        self._unread = False
        restored_before = self.restored
        for start in range(0, len(stored), CHUNK):
            if start:
                await asyncio.sleep(0)  # a running node: messages go on meanwhile
            self.restore(stored[start:start + CHUNK])
        log.warning("dialog store: answered, %d of %d stored dialogs restored into the "
                    "running node", self.restored - restored_before, len(stored),
                    extra={"event": "dialogs_restored"})
        if kept != self.route_secret:
            # Routes signed before this start are refused from untrusted parties already
            # (it signs with the key made at start); the dialogs restored now are tracked,
            # which lets their requests through without a signature.
            log.warning("dialog store: the route secret made at start replaces the one "
                        "the store held")
        return True

    def _unusable(self, exc: StoreError) -> None:
        """Log, once, why a store that answers cannot be used (not being there is logged
        when it begins)."""
        if not isinstance(exc, StoreUnavailable) and str(exc) != self._read_error:
            log.error("dialog store: it cannot be used: %s", exc)
        self._read_error = str(exc)

    # -- running: writing behind ------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("dialog store: a write failed")

    def collect(self) -> StoreBatch:
        """What changed since the last call, as a batch (on the loop; no I/O)."""
        worker = self.worker
        snapshots, dropped = worker.proxy.take_dirty(worker.now())
        taken = self.clock()
        batch = StoreBatch(dropped=dropped)
        transfers = self._transfers
        in_flight = worker.callops.transfer_in_flight
        dialogs = worker.proxy.dialogs
        seen: set[str] = set()
        for snapshot in snapshots:
            dialog_id = snapshot["id"]
            dialog = dialogs.by_id(dialog_id)
            transfer = in_flight(dialog) if dialog is not None else None
            batch.put.append((snapshot, taken, transfer))
            seen.add(dialog_id)
            if transfer is not None:
                transfers[dialog_id] = transfer
            else:
                transfers.pop(dialog_id, None)
        # A transfer can end without a change to its dialog (the new call answered).
        for dialog_id, transfer in list(transfers.items()):
            if dialog_id in seen:
                continue
            dialog = dialogs.by_id(dialog_id)
            now_in_flight = (in_flight(dialog) if dialog is not None and dialog.active
                             else None)
            if now_in_flight != transfer:
                batch.transfers.append((dialog_id, now_in_flight))
                if now_in_flight is None:
                    del transfers[dialog_id]
                else:
                    transfers[dialog_id] = now_in_flight
        for dialog_id in dropped:
            transfers.pop(dialog_id, None)
        return batch

    def everything(self) -> StoreBatch:
        """Every confirmed dialog as it is now, with its transfer in flight, as a batch that
        replaces what the store holds (on the loop; no I/O)."""
        self._transfers.clear()
        batch = StoreBatch(replace=True, route_secret=self.route_secret)
        self._snapshot(list(self.worker.proxy.dialogs), batch)
        return batch

    async def _whole_state(self) -> StoreBatch:
        """`everything`, for a catch-up on a running node: the changed dialogs taken in the
        same step as the list of confirmed ones, so that each counts as written and its end
        is written when it comes; their snapshots taken some at a time, letting messages
        through between (a dialog that changes meanwhile is written again next time)."""
        self.collect()
        dialogs = [d for d in self.worker.proxy.dialogs if d.state in RESTORABLE]
        self._transfers.clear()
        batch = StoreBatch(replace=True, route_secret=self.route_secret)
        for start in range(0, len(dialogs), CHUNK):
            if start:
                await asyncio.sleep(0)
            self._snapshot(dialogs[start:start + CHUNK], batch)
        return batch

    def _snapshot(self, dialogs: list[Dialog], batch: StoreBatch) -> None:
        """The confirmed ones of `dialogs`, as they are now, into `batch`."""
        worker = self.worker
        now, taken = worker.now(), self.clock()
        in_flight = worker.callops.transfer_in_flight
        transfers = self._transfers
        for dialog in dialogs:
            if dialog.state not in RESTORABLE:
                continue
            transfer = in_flight(dialog)
            batch.put.append((dialog.snapshot(now), taken, transfer))
            if transfer is not None:
                transfers[dialog.id] = transfer

    async def flush(self) -> None:
        """Write what changed since the last write. After a failed write the store is
        trusted with nothing: changes are not kept (memory stays bounded however long it is
        away); once it answers again, every confirmed dialog is written (a catch-up)."""
        changes = self.collect()  # taken even while failing: the core keeps no backlog
        if self._catch_up:
            try:
                await self._call(self.store.ping)
            except StoreError as exc:
                self._unusable(exc)
                return
            if self._unread and not await self._read_late():
                return
            if self.monotonic() < self._catch_up_at:
                return
            batch = await self._whole_state()
        else:
            self._pending.merge(changes)
            batch = self._pending
            if not batch:
                await self._look()
                return
        self._pending = StoreBatch()
        try:
            await self._call(self.store.write, batch)
        except BaseException as exc:
            if not isinstance(exc, StoreError):
                # Cancelled or a bug: nothing is known of what the store holds now.
                self._catch_up = True
                raise
            self.failures += 1
            self._gone("a write failed", exc)
            if batch.replace:
                self._catch_up_wait = min(max(2 * self._catch_up_wait, self.interval),
                                          CATCH_UP_BACKOFF)
                self._catch_up_at = self.monotonic() + self._catch_up_wait
            return
        self.writes += 1
        self._catch_up_wait = 0.0
        self._next_look = self.monotonic() + IDLE_LOOK  # it answered just now
        self._catch_up = False
        if self._failing:
            log.warning("dialog store: available again, %d confirmed dialogs written",
                        len(batch.put), extra={"event": "dialog_store_up"})
            self._failing = False

    async def _look(self) -> None:
        """With nothing to write, ask the store now and then whether it answers: an idle
        node must not go on saying a store that went away is there."""
        now = self.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + IDLE_LOOK
        try:
            await self._call(self.store.ping)
        except StoreError as exc:
            self._gone("it does not answer", exc)

    def _gone(self, what: str, exc: StoreError) -> None:
        """The store failed us: memory only, and a catch-up when it answers again."""
        if not self._failing:
            log.error("dialog store: %s, dialogs kept in memory only until the store answers "
                      "again, then all written: %s", what, exc,
                      extra={"event": "dialog_store_down"})
            self._failing = True
        self._catch_up = True

    def statistics(self) -> dict[str, int]:
        return {"store:writes": self.writes, "store:write_failures": self.failures,
                "store:restored_dialogs": self.restored,
                "store:available": 0 if self._failing else 1}

    async def close(self) -> None:
        """Stop writing behind, write what is left, close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
            if self._failing:
                log.error("dialog store: unavailable at stop, the last state of the dialogs "
                          "is not written")
        finally:
            with contextlib.suppress(Exception):
                await self._call(self.store.close)
            self._executor.shutdown(wait=False)
