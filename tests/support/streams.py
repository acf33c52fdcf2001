"""Waiting on stream connections in the transport tests (TLS, WebSocket)."""

from __future__ import annotations

import asyncio
import ssl


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the other end closed (or reset) the connection within `timeout` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


async def eventually(check: object, what: str) -> None:
    """Until `check()` is true, for up to 5 s."""
    for _ in range(250):
        if callable(check) and check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {what} after 5 s")
