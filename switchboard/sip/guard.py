"""Counting failed authentications and banning the sources that make them (Kamailio's
`pike` + `htable` bans, fail2ban's rule, inside the proxy).

A source that fails `max_failures` digests within `window` seconds is banned for `ban_time`:
its messages are dropped unanswered, so a guesser learns nothing and spends its time
waiting. A user whose password is guessed from many sources at once (each staying under the
per-source limit) is protected too: once `user_max_failures` failures for that user are
counted within the window, every further source that fails for it is banned at its first
failure. A success resets nothing: an attacker with one valid account must not be able to
wipe its count by logging in between guesses.

Tables are bounded (the keys come off the wire); time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

_TABLE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class GuardSettings:
    max_failures: int = 5  # per source within the window; 0 = never ban
    user_max_failures: int = 20  # per user from any sources within the window; 0 = off
    window: float = 600.0
    ban_time: float = 900.0


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """A failed digest: what the security log and the metrics report."""

    source: str
    user: str
    method: str
    banned: bool  # this failure banned the source


class _Counts:
    """Failures per key in a fixed window that starts at the key's first failure."""

    __slots__ = ("_table", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._table: dict[str, list[float]] = {}  # key -> [window start, count]

    def add(self, key: str, now: float) -> int:
        table = self._table
        entry = table.get(key)
        if entry is None or now - entry[0] > self.window:
            if len(table) >= _TABLE_LIMIT:
                self._table = table = {k: e for k, e in table.items()
                                       if now - e[0] <= self.window}
                if len(table) >= _TABLE_LIMIT:
                    table.clear()
            entry = table[key] = [now, 0.0]
        entry[1] += 1
        return int(entry[1])


class AuthGuard:
    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self._by_source = _Counts(settings.window)
        self._by_user = _Counts(settings.window)
        # Banned source host -> the time its ban ends. Read on every message, so a plain dict.
        self.banned_until: dict[str, float] = {}

    def is_banned(self, host: str, now: float) -> bool:
        until = self.banned_until.get(host)
        if until is None:
            return False
        if now < until:
            return True
        del self.banned_until[host]
        return False

    def failed(self, host: str, user: str, now: float, may_ban: bool = True) -> bool:
        """Count one failed digest from `host` for `user`; True when it bans `host`.
        `may_ban` is false for trusted sources: they are counted, never banned (a trusted
        SBC fronting many phones must not be cut off by one of them)."""
        s = self.settings
        from_source = self._by_source.add(host, now)
        for_user = self._by_user.add(user, now) if user else 0
        ban = may_ban and (
            (s.max_failures > 0 and from_source >= s.max_failures)
            or (s.user_max_failures > 0 and for_user > s.user_max_failures))
        if ban:
            if len(self.banned_until) >= _TABLE_LIMIT:
                self.banned_until = {h: t for h, t in self.banned_until.items() if t > now}
            self.banned_until[host] = now + s.ban_time
        return ban
