"""Durable dialog state: where a node keeps its confirmed dialogs so that a restarted node
gets them back.

`open_store(url)` opens the store a `[dialog] store` URL names (`sqlite:PATH`, or
`redis://HOST:PORT/DB`: `redisdb.py`, imported only then); every store
is a `DialogStore` (`base.py`): blocking calls, made from one thread beside the event loop;
one that does not answer at start is opened later (`OpenedLater`); `open_at_start`
(`start.py`) is how a node opens it and reads it before serving.
`DialogKeeper` (`keeper.py`) feeds one from a worker's changed dialogs, behind the hot path,
and brings stored dialogs back into a fresh worker. Nothing here is part of the sans-IO core:
the core only says which dialogs changed (`sip/replication.py`).
"""

from .base import DialogStore as DialogStore
from .base import OpenedLater as OpenedLater
from .base import StoreBatch as StoreBatch
from .base import StoredDialog as StoredDialog
from .base import StoreError as StoreError
from .base import StoreUnavailable as StoreUnavailable
from .base import open_store as open_store
from .base import parse_store_url as parse_store_url
from .keeper import DialogKeeper as DialogKeeper
from .sqlite import SqliteStore as SqliteStore
from .start import StoreAtStart as StoreAtStart
from .start import open_at_start as open_at_start
