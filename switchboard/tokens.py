"""The random tokens the core asks its runtime for: tags, branches, its own secrets.

RFC 3261 §19.3 wants tags with at least 32 random bits, and a tag is part of a dialog's id,
so it must not be guessable: every token is 32 bits from the operating system's CSPRNG
(`os.urandom`, what `secrets` uses), as 8 hexadecimal digits. A call takes a few of them
(its to-tag, the branch of each request relayed); asking the kernel for each one would cost
a `getrandom` call each, so they are drawn in blocks and handed out in turn. A token is
never handed out twice, and a process forked with a block in hand draws a fresh one rather
than repeat its parent's tokens.
"""

from __future__ import annotations

import os
import weakref
from typing import Final

TOKEN_BYTES: Final = 4  # 32 random bits (RFC 3261 §19.3)
BLOCK_TOKENS: Final = 1024  # tokens per draw from the kernel
_DIGITS: Final = TOKEN_BYTES * 2

# Every source of this process, so a forked child forgets what its parent drew.
_sources: weakref.WeakSet[RandomTokens] = weakref.WeakSet()


class RandomTokens:
    """A callable giving a new token (8 hexadecimal digits, 32 random bits) each call."""

    __slots__ = ("__weakref__", "_block", "_block_bytes", "_next")

    def __init__(self, block_tokens: int = BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("a block holds at least one token")
        self._block_bytes = TOKEN_BYTES * block_tokens
        self._block = ""  # the current block, in hexadecimal
        self._next = 0  # where the next token starts in it
        _sources.add(self)

    def __call__(self) -> str:
        start = self._next
        if start >= len(self._block):
            self._block = os.urandom(self._block_bytes).hex()
            start = 0
        end = start + _DIGITS
        self._next = end
        return self._block[start:end]

    def forget(self) -> None:
        """Drop what is left of the current block: the next token comes from a new one."""
        self._block = ""
        self._next = 0


def _forget_all() -> None:
    for source in list(_sources):
        source.forget()


os.register_at_fork(after_in_child=_forget_all)
