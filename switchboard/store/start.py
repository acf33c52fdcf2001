"""A node's store at start: opened, its route secret and its dialogs read, before the node
serves anything — or, when it does not answer, one that the keeper opens later.

Both runtimes start this way (the local node; each worker of the `ray` runtime under its own
scope), so what "the store does not answer" means is said once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from .base import DialogStore, OpenedLater, StoredDialog, StoreUnavailable, open_store

log = logging.getLogger(__name__)


@dataclass
class StoreAtStart:
    store: DialogStore
    unavailable: bool  # it did not answer: OpenedLater, nothing was read
    route_secret: str = ""  # "" unless asked for: the stored one, or one made now
    stored: list[StoredDialog] = field(default_factory=list)


async def open_at_start(url: str, *, scope: str = "", route_secret: bool,
                        who: str = "") -> StoreAtStart:
    """Open the store `url` names (under `scope`), read its dialogs and, with
    `route_secret`, the secret that signed our routes (one made and kept if it holds none).
    Routes we signed before a restart must stay valid after it. A store that does not answer
    is logged once (`who` names the node) and comes back as an `OpenedLater`; the secret made
    now then signs this run's routes and replaces the stored one when the store answers
    (`DialogKeeper`). Raises StoreError for a store that answers but cannot be used."""
    loop = asyncio.get_running_loop()
    try:
        # Opening may wait for a network store to answer: not on the loop.
        store: DialogStore = await loop.run_in_executor(None, open_store, url, scope)
    except StoreUnavailable as exc:
        log.error("%sdialog store does not answer: %s; serving from memory only "
                  "(store:available 0) until it does, then its dialogs are restored "
                  "and every confirmed dialog written", who, exc,
                  extra={"event": "dialog_store_down"})
        return StoreAtStart(OpenedLater(url, lambda u: open_store(u, scope)), True,
                            secrets.token_hex(32) if route_secret else "")
    try:
        secret = (await loop.run_in_executor(None, store.route_secret,
                                             lambda: secrets.token_hex(32))
                  if route_secret else "")
        stored = await loop.run_in_executor(None, store.load)
    except BaseException:
        store.close()
        raise
    return StoreAtStart(store, False, secret, stored)
