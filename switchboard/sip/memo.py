"""Bounded memos of what the core derives from message text.

A proxy sees the same few values over and over (its own and its peers' addresses, hosts,
routes, header names), so it keeps what it worked out from them. The keys come off the wire,
so every such memo is bounded: when it is full it starts again from empty, which costs one
miss per value still in use and never lets a flood of distinct values grow it.
"""

from __future__ import annotations

from typing import TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")


def remember(memo: dict[_K, _V], key: _K, value: _V, limit: int = 65536) -> _V:
    """Store `value` in a memo of something derived from message text (a trusted source, a
    next-hop address, our own Route): bounded, since the keys come off the wire."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
