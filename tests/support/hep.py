"""HEP3 packets taken apart, for the tests of switchboard's HEP mirror.

A decoder written from the HEP3 layout (sipcapture's HEP spec, ecosystem.md §4), independently
of `switchboard.hep`'s encoder: `decode` checks the header and every chunk's length, `by_type`
also that every chunk is a generic one (vendor 0) and no type comes twice.
"""

from __future__ import annotations

import struct


def decode(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, data) of every chunk, after checking the header and every length."""
    assert packet[:4] == b"HEP3"
    (total,) = struct.unpack("!H", packet[4:6])
    assert total == len(packet)
    chunks = []
    at = 6
    while at < len(packet):
        vendor, kind, length = struct.unpack("!HHH", packet[at : at + 6])
        assert length >= 6 and at + length <= len(packet), (kind, length)
        chunks.append((vendor, kind, packet[at + 6 : at + length]))
        at += length
    assert at == len(packet)
    return chunks


def by_type(packet: bytes) -> dict[int, bytes]:
    chunks = decode(packet)
    assert all(vendor == 0 for vendor, _, _ in chunks)
    types = [kind for _, kind, _ in chunks]
    assert len(types) == len(set(types)), types
    return {kind: data for _, kind, data in chunks}
