"""The dialog store in a Redis database (`[dialog] store = "redis://HOST:PORT/DB"`), through
redis-py: a store that outlives the machine a node runs on.

Keys, all under `switchboard:`: `meta` (a hash: the format, the route secret), `dialogs` (the
set of stored dialog ids), one hash per dialog, `dialog:ID` (`call_id`, `taken`, `snapshot`
and `transfer`, the last two packed as `readout.pack` does; an empty `transfer` is none),
and `writer`, the token of the store object that writes. A batch is one MULTI/EXEC
pipeline: applied whole or not at all. The database is one node's: two nodes must not share
one (their dialog ids may be the same), unless each opens it with a prefix of its own in
place of `switchboard:` (the `ray` runtime's workers: `switchboard:w<i>:`).

Fencing: a write that timed out may still be applied, later, by a Redis that was hung
(SIGSTOPped, swapping) and reads it from its socket when it wakes up — after the keeper's
catch-up that wrote the current state, bringing ended dialogs back. So the first write of a
store object, and every batch that replaces the state, sets `writer` to a new token; every
other batch WATCHes `writer` and is applied only while it is still this object's token: a
late batch finds it changed and comes to nothing (and a batch of a store object that another
one took over fails, which makes its keeper write everything again).

How long a write survives is Redis's to say (`appendonly`, `save`): a Redis that restarts
empty is written again whole by the keeper's catch-up, route secret included.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..readout import pack, unpack
from .base import StoreBatch, StoredDialog, StoreError, StoreUnavailable, Transfer

log = logging.getLogger(__name__)

FORMAT: Final = "1"  # what `meta` says of the keys below
PREFIX: Final = "switchboard:"
META: Final = PREFIX + "meta"
IDS: Final = PREFIX + "dialogs"
WRITER: Final = PREFIX + "writer"
# Seconds to connect and to wait for an answer: a Redis that went away must not hold the
# store thread (and so the final write at stop) for long.
TIMEOUT: Final = 2.0
# Tries after a failed one, at once: one, for a pooled connection that a restarted Redis
# closed. redis-py's own default (ten, with backoff) would keep the store thread on a hung
# Redis for ten timeouts; the keeper tries again every interval anyway.
RETRIES: Final = 1
LOAD_CHUNK: Final = 1000  # dialogs read per round trip at start

# Every stored dialog forgotten (a batch that replaces the state).
_CLEAR: Final = """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return 0
"""

# A transfer state for a dialog that is still stored (a dialog deleted in the meantime
# must not come back as a hash without a snapshot).
_SET_TRANSFER: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'transfer', ARGV[1])
end
return 0
"""


def dialog_key(dialog_id: str) -> str:
    return f"{PREFIX}dialog:{dialog_id}"


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


def _error(url: str, exc: RedisError) -> StoreError:
    """The StoreError for one of redis-py's; StoreUnavailable when Redis did not answer (a
    refused connection, a timeout, a Redis still loading its data)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return StoreUnavailable(f"{url}: {exc}")
    return StoreError(f"{url}: {exc}")


def _packed_transfer(transfer: Transfer | None) -> bytes:
    return b"" if transfer is None else pack(list(transfer))


def _transfer(value: bytes | None) -> Transfer | None:
    if not value:
        return None
    leg, callid, destination = unpack(value)
    return str(leg), str(callid), str(destination)


class RedisStore:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._meta = prefix + "meta"
        self._ids = prefix + "dialogs"
        self._writer_key = prefix + "writer"
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
                retry=Retry(NoBackoff(), RETRIES))
        except ValueError as exc:
            raise StoreError(f"{url}: {exc}") from None
        try:
            self._redis.hsetnx(self._meta, "format", FORMAT)
            found = self._redis.hget(self._meta, "format")
        except RedisError as exc:
            self._redis.close()
            raise _error(url, exc) from None
        if found is None or _text(found) != FORMAT:
            self._redis.close()
            raise StoreError(f"{url}: a dialog store of format {found!r}, this version "
                             f"reads {FORMAT!r}")
        self._set_transfer = self._redis.register_script(_SET_TRANSFER)
        self._clear = self._redis.register_script(_CLEAR)
        self._writer: bytes | None = None  # our token in `writer`, once we wrote

    def _key(self, dialog_id: str) -> str:
        return f"{self.prefix}dialog:{dialog_id}"

    def load(self) -> list[StoredDialog]:
        out: list[StoredDialog] = []
        try:
            ids = sorted(_text(i) for i in self._redis.smembers(self._ids))
            rows: list[tuple[str, dict[bytes, bytes]]] = []
            for start in range(0, len(ids), LOAD_CHUNK):
                chunk = ids[start:start + LOAD_CHUNK]
                pipe = self._redis.pipeline(transaction=False)
                for dialog_id in chunk:
                    pipe.hgetall(self._key(dialog_id))
                rows.extend(zip(chunk, pipe.execute(), strict=True))
        except RedisError as exc:
            raise _error(self.url, exc) from None
        for dialog_id, fields in rows:
            try:
                snap = unpack(fields[b"snapshot"])
                if not isinstance(snap, dict):
                    raise ValueError("not a map")
                out.append(StoredDialog(snap, float(fields[b"taken"]),
                                        _transfer(fields.get(b"transfer"))))
            except Exception as exc:  # a missing field, msgpack's errors
                log.warning("stored dialog %s left out: %s", dialog_id, exc)
        return out

    def write(self, batch: StoreBatch) -> None:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                token = self._writer
                if batch.replace or token is None:
                    token = secrets.token_hex(8).encode()
                    pipe.multi()
                    pipe.set(self._writer_key, token)
                else:
                    writer = self._writer_key
                    pipe.watch(writer)  # type: ignore[no-untyped-call]  # unannotated upstream
                    if pipe.get(writer) != token:
                        raise StoreError(f"{self.url}: another store object writes here now")
                    pipe.multi()
                if batch.replace:
                    self._clear(keys=[self._ids], args=[self._key("")], client=pipe)
                self._queue(pipe, batch)
                pipe.execute()
        except RedisError as exc:
            raise _error(self.url, exc) from None
        self._writer = token

    def _queue(self, pipe: Pipeline, batch: StoreBatch) -> None:
        """The batch's commands, after MULTI."""
        for snap, taken, transfer in batch.put:
            dialog_id = snap["id"]
            pipe.hset(self._key(dialog_id), mapping={
                "call_id": snap["call_id"], "taken": repr(taken), "snapshot": pack(snap),
                "transfer": _packed_transfer(transfer)})
            pipe.sadd(self._ids, dialog_id)
        for dialog_id, transfer in batch.transfers:
            self._set_transfer(keys=[self._key(dialog_id)],
                               args=[_packed_transfer(transfer)], client=pipe)
        for dialog_id in batch.dropped:
            pipe.delete(self._key(dialog_id))
            pipe.srem(self._ids, dialog_id)
        if batch.route_secret:
            pipe.hset(self._meta, "route_secret", batch.route_secret)

    def route_secret(self, generate: Callable[[], str]) -> str:
        try:
            if (found := self._redis.hget(self._meta, "route_secret")) is None:
                # Set only if still absent: a concurrent writer's secret is kept.
                self._redis.hsetnx(self._meta, "route_secret", generate())
                found = self._redis.hget(self._meta, "route_secret")
        except RedisError as exc:
            raise _error(self.url, exc) from None
        assert found is not None
        return _text(found)

    def clear(self) -> None:
        self.write(StoreBatch(replace=True))

    def ping(self) -> None:
        try:
            self._redis.ping()
        except RedisError as exc:
            raise _error(self.url, exc) from None

    def __len__(self) -> int:
        return int(self._redis.scard(self._ids))

    def close(self) -> None:
        self._redis.close()
