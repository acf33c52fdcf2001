"""The SQLite dialog store: batches in, dialogs out, the route secret kept, a file of another
format refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from switchboard.store import SqliteStore, StoreBatch, StoreError, open_store
from tests.unit.kit.store import assert_two_batches_read_back, snap


def test_a_batch_is_read_back_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "d" / "dialogs.sqlite"
    store = SqliteStore(str(path))
    store.write(StoreBatch(put=[(snap("0.1"), 10.0, None),
                                (snap("0.2"), 10.5, ("caller", "", "sip:c@example.com"))]))
    store.write(StoreBatch(put=[(snap("0.3", b"\xff"), 11.0, None)],
                           transfers=[("0.2", None), ("0.1", ("callee", "x", "sip:d@x"))],
                           dropped=["0.3"]))
    store.close()
    again = SqliteStore(str(path))
    assert_two_batches_read_back(again)
    # A catch-up batch replaces every stored dialog.
    again.write(StoreBatch(put=[(snap("0.4"), 12.0, None)], replace=True))
    assert [s.snapshot["id"] for s in again.load()] == ["0.4"]
    again.ping()
    again.clear()
    assert again.load() == []
    again.close()


def test_the_route_secret_is_generated_once(tmp_path: Path) -> None:
    path = str(tmp_path / "dialogs.sqlite")
    store = SqliteStore(path)
    assert store.route_secret(lambda: "first") == "first"
    store.close()
    store = SqliteStore(path)
    assert store.route_secret(lambda: "second") == "first"
    store.clear()  # dialogs only
    assert store.route_secret(lambda: "third") == "first"
    store.close()


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.sqlite"
    SqliteStore(str(path)).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_row_that_does_not_decode_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.sqlite"
    store = SqliteStore(str(path))
    store.write(StoreBatch(put=[(snap("0.1"), 1.0, None)]))
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO dialogs VALUES ('0.2', 'c', 1.0, x'c1', NULL)")
    assert [s.snapshot["id"] for s in store.load()] == ["0.1"]
    store.close()


def test_another_format_or_a_bad_url_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.sqlite"
    SqliteStore(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(StoreError, match="format '99'"):
        SqliteStore(str(path))
    with pytest.raises(StoreError, match="expected sqlite:PATH or redis://"):
        open_store("redis://127.0.0.1:6379/zero")
    with pytest.raises(StoreError, match="expected sqlite:PATH"):
        open_store("sqlite:")
    assert isinstance(open_store(f"sqlite:{tmp_path / 'other.sqlite'}"), SqliteStore)
