"""The dialog store in one SQLite file (`[dialog] store = "sqlite:PATH"`), for the local
runtime: the standard library's `sqlite3`, in WAL mode.

A batch is one transaction. With `synchronous = NORMAL` a committed batch survives the
process being killed (the WAL is in the file system's hands); a power cut may lose the last
batches, not the file. One connection, used by one thread at a time (the runtime's store
thread); the file is the only state.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..readout import pack, unpack
from .base import StoreBatch, StoredDialog, StoreError, Transfer

log = logging.getLogger(__name__)

FORMAT: Final = "1"  # what `meta.format` says of the tables below

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dialogs (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, "
    "taken REAL NOT NULL, snapshot BLOB NOT NULL, transfer BLOB)",
)


def _transfer(value: Any) -> Transfer | None:
    if value is None:
        return None
    leg, callid, destination = unpack(value)
    return str(leg), str(callid), str(destination)


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Opened here, used from the runtime's store thread: one user at a time.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                row = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                elif row[0] != FORMAT:
                    raise StoreError(f"{path}: a dialog store of format {row[0]!r}, "
                                     f"this version reads {FORMAT!r}")
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None

    def load(self) -> list[StoredDialog]:
        out: list[StoredDialog] = []
        try:
            rows = self._db.execute(
                "SELECT id, taken, snapshot, transfer FROM dialogs").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        for dialog_id, taken, snapshot, transfer in rows:
            try:
                snap = unpack(snapshot)
                if not isinstance(snap, dict):
                    raise ValueError("not a map")
                out.append(StoredDialog(snap, float(taken), _transfer(transfer)))
            except Exception as exc:  # msgpack's errors are not all ValueErrors
                log.warning("stored dialog %s left out: %s", dialog_id, exc)
        return out

    def write(self, batch: StoreBatch) -> None:
        rows = [(snap["id"], snap["call_id"], taken, pack(snap),
                 None if transfer is None else pack(list(transfer)))
                for snap, taken, transfer in batch.put]
        try:
            with self._db:
                self._db.execute("BEGIN")
                if batch.replace:
                    self._db.execute("DELETE FROM dialogs")
                self._db.executemany("INSERT OR REPLACE INTO dialogs VALUES (?, ?, ?, ?, ?)",
                                     rows)
                self._db.executemany(
                    "UPDATE dialogs SET transfer = ? WHERE id = ?",
                    [(None if t is None else pack(list(t)), dialog_id)
                     for dialog_id, t in batch.transfers])
                self._db.executemany("DELETE FROM dialogs WHERE id = ?",
                                     [(dialog_id,) for dialog_id in batch.dropped])
                if batch.route_secret:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('route_secret', ?)",
                                     (batch.route_secret,))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def route_secret(self, generate: Callable[[], str]) -> str:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'route_secret'").fetchone()
                if row is not None:
                    return str(row[0])
                secret = generate()
                self._db.execute("INSERT INTO meta VALUES ('route_secret', ?)", (secret,))
                return secret
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def clear(self) -> None:
        try:
            with self._db:
                self._db.execute("DELETE FROM dialogs")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def ping(self) -> None:
        try:
            self._db.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM dialogs").fetchone()[0])

    def close(self) -> None:
        self._db.close()
