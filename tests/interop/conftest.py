"""Fixtures shared by the baresip interop modules (direct calls and calls through the proxy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.interop.baresip import BaresipPeer, PeerFactory


@pytest.fixture
def peer() -> Iterator[PeerFactory]:
    """Start peers on demand; every one is stopped (killed if need be) at teardown.

    Each peer's recent events and stderr are printed at teardown: pytest shows that
    captured output only when the test failed.
    """
    started: list[BaresipPeer] = []

    def start(user: str, **kwargs: Any) -> BaresipPeer:
        p = BaresipPeer(user, **kwargs)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()
        # Enough stderr lines for a whole --sip-trace of a short call.
        print(p.describe(stderr_lines=400 if p.sip_trace else 60))
