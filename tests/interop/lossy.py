"""A fault-injecting UDP relay between one user agent and switchboard, for loss tests.

Topology, one relay per user agent::

    UA  <->  ua_port [relay] sb_port  <->  switchboard

The UA sends everything to `ua_port` (SIPp's remote address) and names `sb_port` in its
Contact (and Via), so switchboard sees the relay's `sb_port` as the UA's address and sends
its requests and responses there; the relay forwards them to the UA from `ua_port`. The UA's
address is fixed up front (a callee) or learnt from its first datagram (a caller). The relay
never reads SIP: it only drops, duplicates and holds back datagrams.

Each direction (`up`: UA → switchboard, `down`: switchboard → UA) has its own `Faults` and
its own seeded `random.Random`, so a run is reproducible up to the order datagrams arrive in.
A held-back ("reordered") datagram is sent `reorder_delay` seconds later, so the ones behind
it overtake it; a duplicate is sent again right after the original.

The relays run on an asyncio loop in one background thread (`RelayPool`), so synchronous
tests and scripts can use them: everything stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
Addr = tuple[str, int]


@dataclass(frozen=True)
class Faults:
    """What happens to the datagrams of one direction (each a probability in [0, 1])."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {value!r}")
        if not 0.0 <= self.reorder_delay <= 5.0:
            raise ValueError(f"reorder_delay must be in [0, 5] s, not {self.reorder_delay!r}")


@dataclass
class Counts:
    """What one direction of a relay did."""

    received: int = 0
    forwarded: int = 0  # sent on, duplicates and held-back ones included
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    unroutable: int = 0  # downstream before the UA's address was known

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a UA that has gone: the loss is the point here

    def sendto(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


@dataclass
class LossyRelay:
    """One UA's relay; create through `RelayPool.relay`."""

    target: Addr
    ua: Addr | None
    up_faults: Faults
    down_faults: Faults
    seed: int
    ua_port: int = 0
    sb_port: int = 0
    up: Counts = field(default_factory=Counts)
    down: Counts = field(default_factory=Counts)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _ua_side: _Side | None = field(default=None, repr=False)
    _sb_side: _Side | None = field(default=None, repr=False)
    _rngs: dict[str, random.Random] = field(default_factory=dict, repr=False)
    last_datagram: float = 0.0  # time.monotonic() of the last datagram either way

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._rngs = {"up": random.Random(f"{self.seed}-up"),
                      "down": random.Random(f"{self.seed}-down")}
        self._ua_side = _Side(self._from_ua)
        self._sb_side = _Side(self._from_switchboard)
        await self._loop.create_datagram_endpoint(lambda: self._ua_side, local_addr=(HOST, 0))
        await self._loop.create_datagram_endpoint(lambda: self._sb_side, local_addr=(HOST, 0))
        assert self._ua_side.transport is not None and self._sb_side.transport is not None
        self.ua_port = self._ua_side.transport.get_extra_info("sockname")[1]
        self.sb_port = self._sb_side.transport.get_extra_info("sockname")[1]

    def _close(self) -> None:
        for side in (self._ua_side, self._sb_side):
            if side is not None and side.transport is not None:
                side.transport.close()

    def _from_ua(self, data: bytes, addr: Addr) -> None:
        if self.ua is None:
            self.ua = addr
        assert self._sb_side is not None
        self._pass(data, "up", self.up_faults, self.up, self._sb_side, self.target)

    def _from_switchboard(self, data: bytes, addr: Addr) -> None:
        if self.ua is None:
            self.down.received += 1
            self.down.unroutable += 1
            return
        assert self._ua_side is not None
        self._pass(data, "down", self.down_faults, self.down, self._ua_side, self.ua)

    def _pass(self, data: bytes, direction: str, faults: Faults, counts: Counts, out: _Side,
              dest: Addr) -> None:
        rng = self._rngs[direction]
        self.last_datagram = time.monotonic()
        counts.received += 1
        # Draw all three every time so one fault's setting does not shift the others' dice.
        lose, hold, twice = rng.random(), rng.random(), rng.random()
        if lose < faults.loss:
            counts.dropped += 1
            return
        copies = 2 if twice < faults.duplicate else 1
        counts.duplicated += copies - 1
        counts.forwarded += copies
        if hold < faults.reorder:
            counts.reordered += 1
            assert self._loop is not None
            for _ in range(copies):
                self._loop.call_later(faults.reorder_delay, out.sendto, data, dest)
            return
        for _ in range(copies):
            out.sendto(data, dest)


class RelayPool:
    """An asyncio loop in a daemon thread hosting any number of relays.

    Use as a context manager; `relay()` opens one (its ports are set when it returns).
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lossy-relays")
        self.relays: list[LossyRelay] = []
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def relay(
        self,
        target: Addr,
        *,
        ua: Addr | None = None,
        faults: Faults | None = None,
        up: Faults | None = None,
        down: Faults | None = None,
        seed: int = 0,
    ) -> LossyRelay:
        """A relay toward switchboard at `target`; `faults` for both directions unless `up`
        or `down` say otherwise; `ua` when the UA's address is known in advance."""
        both = faults or Faults()
        relay = LossyRelay(target, ua, up or both, down or both, seed)
        asyncio.run_coroutine_threadsafe(relay._open(), self._loop).result(10)
        self.relays.append(relay)
        return relay

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Wait until no relay has seen a datagram for `quiet` s: the retransmissions of
        what was lost have run their course (the gaps between them grow to T2, so choose
        `quiet` above the longest gap expected)."""
        deadline = time.monotonic() + timeout
        while True:
            last = max((r.last_datagram for r in self.relays), default=0.0)
            now = time.monotonic()
            if now - last >= quiet:
                return
            if now > deadline:
                raise AssertionError(f"relays still busy after {timeout} s: {self.totals()}")
            time.sleep(min(0.1, quiet))

    def totals(self) -> dict[str, Counts]:
        out = {"up": Counts(), "down": Counts()}
        for relay in self.relays:
            out["up"].add(relay.up)
            out["down"].add(relay.down)
        return out

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shut() -> None:
            for relay in self.relays:
                relay._close()
            await asyncio.sleep(0)  # let the transports finish closing

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> RelayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
