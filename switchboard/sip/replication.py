"""Dialog state replication, for a cluster runtime that brings a crashed worker's dialogs
back: which confirmed dialogs changed since the runtime last asked (their snapshots go
out), which replicated ones ended (their copies can go), and a confirmed dialog put back
into a fresh core of the same worker from its snapshot.

Nothing is encoded per message: whoever touches a dialog (a relayed message, a request of
the proxy's own, an answer to one) calls `changed`, a set add once a runtime asked for it
(`track_changes`), nothing otherwise. Knows the dialog table and our sockets; the dialog's
timers and the statistics stay with the proxy.
"""

from __future__ import annotations

from typing import Any

from .addressing import Addressing
from .dialog import Dialog, DialogState, DialogTable, worker_of

# The states a dialog is replicated and restored in.
RESTORABLE = (DialogState.CONFIRMED_NA, DialogState.CONFIRMED)


class Replication:
    def __init__(self, dialogs: DialogTable, addressing: Addressing) -> None:
        self.dialogs = dialogs
        self.addressing = addressing
        # Dialogs changed since the last `take_dirty` (None: nobody replicates them), and
        # the ids of dialogs whose snapshot went out (their end must be reported).
        self.dirty: set[Dialog] | None = None
        self._replicated: set[str] = set()

    def track_changes(self) -> None:
        """Start remembering changed dialogs for `take_dirty` (a runtime that replicates
        them calls this once; without it nothing is collected)."""
        if self.dirty is None:
            self.dirty = set()

    def changed(self, dialog: Dialog) -> None:
        """`dialog` changed (or ended): its snapshot, or its end, goes out next time."""
        dirty = self.dirty
        if dirty is not None:
            dirty.add(dialog)

    def take_dirty(self, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(snapshots, dropped): a `Dialog.snapshot` of every confirmed dialog that changed
        since the last call, and the ids of dialogs replicated before that have ended since
        (a copy kept elsewhere can go). A dialog that ends before it is confirmed, or before
        any snapshot of it went out, is in neither."""
        dirty = self.dirty
        if not dirty:
            return [], []
        self.dirty = set()
        replicated = self._replicated
        snapshots: list[dict[str, Any]] = []
        dropped: list[str] = []
        for dialog in dirty:
            if dialog.state in RESTORABLE:
                snapshots.append(dialog.snapshot(now))
                replicated.add(dialog.id)
            elif dialog.state is DialogState.DELETED and dialog.id in replicated:
                replicated.discard(dialog.id)
                dropped.append(dialog.id)
        return snapshots, dropped

    def restore(self, snapshot: dict[str, Any], now: float, elapsed: float) -> Dialog | None:
        """Put the dialog of `snapshot`, taken `elapsed` seconds ago, back into the table
        (same id, Call-ID, legs, CSeq shifts, hold state), facing our sockets of now.

        Answers the dialog, or None when it is not confirmed or its id or Call-ID is here
        already. Raises ValueError for a snapshot that does not parse or names another
        worker. Arming its lifetime timer is the caller's (`Proxy.restore_dialog`)."""
        dialog = Dialog.from_snapshot(snapshot, now, elapsed)
        if worker_of(dialog.id) != self.dialogs.worker_id:
            raise ValueError(f"dialog {dialog.id} belongs to another worker than "
                             f"{self.dialogs.worker_id:x}")
        if dialog.state not in RESTORABLE:
            return None
        if (self.dialogs.by_id(dialog.id) is not None
                or self.dialogs.by_call_id(dialog.call_id) is not None):
            return None
        listeners = self.addressing.listeners
        for leg in (dialog.caller, dialog.callee):
            # Our sockets may have moved (port 0, another node): the one facing the leg now.
            if leg.local not in listeners:
                leg.local = (self.addressing.local_for(leg.address) if leg.address is not None
                             else None) or listeners[0]
        self.dialogs.add(dialog)
        self._replicated.add(dialog.id)
        return dialog
