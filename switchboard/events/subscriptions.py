"""The subscription table: which sink sockets want which events, and until when.

Pure bookkeeping, sans-IO: time comes in as `now` (any monotonic clock, in seconds), nothing
is opened or sent here. OpenSIPS semantics (`evi:subscribe`): subscribing again to the same
event and socket renews the expiry, and expire 0 removes the subscription. Static
subscriptions (from configuration) never expire and are not changed by run-time requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subscription:
    """One (event, socket) pair; `expires_at` is None for a static subscription."""

    event: str
    socket: str
    expires_at: float | None

    @property
    def static(self) -> bool:
        return self.expires_at is None

    def alive(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class SubscriptionTable:
    """Subscriptions keyed by (event, socket), kept in the order they were first made."""

    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], Subscription] = {}

    def subscribe(
        self, event: str, socket: str, expire: int | None, now: float
    ) -> Subscription | None:
        """Add, renew or (expire 0) remove a subscription; expire None makes it static.

        Returns the subscription now in force for (event, socket), or None when there is
        none. A static subscription is left as it is: configuration outranks run-time requests.
        """
        if expire is not None and expire < 0:
            raise ValueError(f"negative expire value {expire}")
        key = (event, socket)
        current = self._subs.get(key)
        if current is not None and current.static:
            return current
        if expire == 0:
            self._subs.pop(key, None)
            return None
        sub = Subscription(event, socket, None if expire is None else now + expire)
        # Renewal keeps the original position so delivery order stays stable.
        self._subs[key] = sub
        return sub

    def unsubscribe(self, event: str, socket: str) -> bool:
        """Remove a run-time subscription; static ones stay. True when one was removed."""
        current = self._subs.get((event, socket))
        if current is None or current.static:
            return False
        del self._subs[(event, socket)]
        return True

    def remove(self, event: str, socket: str) -> bool:
        """Remove a subscription of either kind (for a sink that could not be opened)."""
        return self._subs.pop((event, socket), None) is not None

    def sockets_for(self, event: str, now: float) -> list[str]:
        """Sockets with a live subscription to `event`, in subscription order."""
        return [s.socket for s in self._subs.values() if s.event == event and s.alive(now)]

    def expire(self, now: float) -> list[Subscription]:
        """Drop every subscription that has expired at `now`; return what was dropped."""
        gone = [s for s in self._subs.values() if not s.alive(now)]
        for sub in gone:
            del self._subs[(sub.event, sub.socket)]
        return gone

    def events(self) -> frozenset[str]:
        """Every event some subscription names (expired or not: `expire` first)."""
        return frozenset(s.event for s in self._subs.values())

    def sockets(self) -> set[str]:
        """Every socket some subscription refers to (expired or not)."""
        return {s.socket for s in self._subs.values()}

    def next_expiry(self) -> float | None:
        """When the next run-time subscription expires, or None if none will."""
        times = [s.expires_at for s in self._subs.values() if s.expires_at is not None]
        return min(times, default=None)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._subs.values()))

    def __len__(self) -> int:
        return len(self._subs)
