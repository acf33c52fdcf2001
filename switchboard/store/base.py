"""What every dialog store offers (`DialogStore`), what goes in and comes out of one, and
the store a `[dialog] store` URL names.

A store keeps, per confirmed dialog, its snapshot (`Dialog.snapshot`: a dict of str, int,
bytes, lists and dicts), the wall time it was taken and the transfer it had in flight, if
any; and one value besides the dialogs: the key that signs our Record-Route when the
configuration leaves it empty, so that routes signed before a restart stay valid after it.
A store's calls block: the runtime makes them from a thread of its own.

A store that does not answer when the node starts (`StoreUnavailable`: a Redis down, hung or
unreachable) need not keep the node from starting: `OpenedLater` stands in for it and opens
it at its first call that succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

# A transfer in flight, as kept beside its dialog: (leg, transfer Call-ID, destination).
Transfer = tuple[str, str, str]


class StoreError(Exception):
    """The store cannot be opened or used (a bad URL, a file that is not a store of ours,
    a full disk)."""


class StoreUnavailable(StoreError):
    """The store did not answer (a network store down, hung or out of reach): unlike the
    other StoreErrors, a state that passes by itself."""


@dataclass(frozen=True, slots=True)
class StoredDialog:
    """One dialog read back: its snapshot, when it was taken (wall-clock seconds) and the
    transfer it had in flight then."""

    snapshot: dict[str, Any]
    taken: float
    transfer: Transfer | None = None


@dataclass(slots=True)
class StoreBatch:
    """What changed since the last batch: snapshots to put (each with the wall time it was
    taken and the transfer its dialog has in flight), transfer states of dialogs whose
    snapshot did not change, and the ids of dialogs that ended. With `replace`, every
    stored dialog is forgotten first: the batch is the whole state (a catch-up). A
    `route_secret` replaces the Record-Route key kept in the store, in the same write: the
    key that signed the routes of the dialogs the batch holds."""

    put: list[tuple[dict[str, Any], float, Transfer | None]] = field(default_factory=list)
    transfers: list[tuple[str, Transfer | None]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    replace: bool = False
    route_secret: str = ""

    def __bool__(self) -> bool:
        return bool(self.put or self.transfers or self.dropped or self.replace
                    or self.route_secret)

    def __len__(self) -> int:
        return len(self.put) + len(self.transfers) + len(self.dropped)

    def merge(self, later: StoreBatch) -> None:
        """Add `later`'s changes after these (the later wins for a dialog in both)."""
        if later.replace:
            self.put, self.transfers, self.dropped = [], [], []
            self.replace = True
        self.put.extend(later.put)
        self.transfers.extend(later.transfers)
        self.dropped.extend(later.dropped)
        self.route_secret = later.route_secret or self.route_secret


class DialogStore(Protocol):
    def load(self) -> list[StoredDialog]:
        """Every dialog stored (the ones that do not decode are left out, logged)."""
        ...

    def write(self, batch: StoreBatch) -> None:
        """Apply `batch` at once (all of it or nothing); raises StoreError (StoreUnavailable
        when the store did not answer)."""
        ...

    def route_secret(self, generate: Callable[[], str]) -> str:
        """The Record-Route key kept here; `generate()`'s, stored, when there is none yet."""
        ...

    def clear(self) -> None:
        """Forget every dialog (the key stays)."""
        ...

    def ping(self) -> None:
        """Return when the store answers; raises StoreError (a cheap look, made before a
        catch-up write is attempted)."""
        ...

    def close(self) -> None: ...


EXPECTED: Final = "expected sqlite:PATH or redis://HOST[:PORT][/DB]"


def parse_store_url(url: str) -> tuple[str, str]:
    """(kind, location) of a store URL; raises ValueError for one no store reads. A redis
    URL's location is the URL itself (`redis://HOST[:PORT][/DB]`, as redis-py reads it)."""
    kind, sep, rest = url.partition(":")
    if not sep or not rest:
        raise ValueError(f"{url!r}: {EXPECTED}")
    if kind == "sqlite":
        return kind, rest
    if kind == "redis":
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError for one that is not a number
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}; {EXPECTED}") from None
        db = parts.path.strip("/")
        if parts.hostname and (not db or db.isdigit()) and not parts.query and port != 0:
            return kind, url
        raise ValueError(f"{url!r}: {EXPECTED}")
    raise ValueError(f"{url!r}: unknown store {kind!r}; {EXPECTED}")


def open_store(url: str, scope: str = "") -> DialogStore:
    """Open (creating if needed) the store `url` names; raises StoreError (StoreUnavailable
    for one that does not answer). Blocks (a redis store is asked whether it answers): call
    it from a thread. With a `scope`, the dialogs are kept apart from every other scope's in
    the same store (a redis key prefix, a file of its own beside PATH): one scope a worker
    of the `ray` runtime."""
    try:
        kind, location = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if kind == "redis":
        from .redisdb import PREFIX, RedisStore

        return RedisStore(location, f"{PREFIX}{scope}:" if scope else PREFIX)
    from .sqlite import SqliteStore

    return SqliteStore(f"{location}.{scope}" if scope and location != ":memory:" else location)


class OpenedLater:
    """The store `url` names, which did not answer when the node started: each call opens
    it first, raising StoreUnavailable (or the StoreError that opening it raised) until that
    succeeds, then goes to it. A `DialogStore` for the keeper in the meantime; made from the
    store thread only, like every store's calls."""

    def __init__(self, url: str, opener: Callable[[str], DialogStore] = open_store) -> None:
        self.url = url
        self._opener = opener
        self._store: DialogStore | None = None

    @property
    def opened(self) -> bool:
        return self._store is not None

    def _opened(self) -> DialogStore:
        if self._store is None:
            self._store = self._opener(self.url)
        return self._store

    def load(self) -> list[StoredDialog]:
        return self._opened().load()

    def write(self, batch: StoreBatch) -> None:
        self._opened().write(batch)

    def route_secret(self, generate: Callable[[], str]) -> str:
        return self._opened().route_secret(generate)

    def clear(self) -> None:
        self._opened().clear()

    def ping(self) -> None:
        self._opened().ping()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
