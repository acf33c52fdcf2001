"""The random tokens of the core's tags and branches: 32 random bits as 8 hexadecimal digits
each, never the same one twice, drawn from the kernel in blocks rather than one call each,
and not shared with a forked child."""

from __future__ import annotations

import os

import pytest

from switchboard.tokens import RandomTokens


def test_each_token_is_32_bits_in_hex_and_none_repeats() -> None:
    source = RandomTokens(block_tokens=16)
    drawn = [source() for _ in range(16 * 50 + 3)]  # across many blocks and into one more
    assert all(len(t) == 8 and int(t, 16) >= 0 and t == t.lower() for t in drawn)
    assert len(set(drawn)) == len(drawn)


def test_one_draw_from_the_kernel_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []

    def urandom(n: int) -> bytes:
        draws.append(n)
        return bytes(range(n))

    monkeypatch.setattr(os, "urandom", urandom)
    source = RandomTokens(block_tokens=4)
    drawn = [source() for _ in range(9)]
    assert draws == [16, 16, 16]
    # The block is handed out in order, 4 bytes a token, and not again.
    assert drawn[:4] == ["00010203", "04050607", "08090a0b", "0c0d0e0f"]
    assert drawn[4] == "00010203"  # the next draw (this fake kernel repeats itself)


def test_forget_starts_a_new_block(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    source = RandomTokens(block_tokens=8)
    source()
    source.forget()
    source()
    assert len(draws) == 2


def test_a_forked_child_does_not_repeat_its_parents_tokens() -> None:
    source = RandomTokens()
    source()  # a block in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, then out at once
        try:
            os.write(write_end, source().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 8
    assert child != source()


def test_a_block_holds_at_least_one_token() -> None:
    with pytest.raises(ValueError):
        RandomTokens(block_tokens=0)
