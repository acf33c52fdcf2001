"""Debian's sngrep decodes switchboard's HEP v3 capture of a real call.

sngrep listens for HEP (`-L udp:127.0.0.1:P`, no live capture `-N`, quiet `-q`) and writes
what it decoded to a pcap (`-O`); switchboard runs with `--hep udp:127.0.0.1:P` and SIPp
places a call through it. The pcap, read back here, must hold every SIP message the proxy
received and sent, with the addresses and ports they travelled between.

Needs sngrep (`apt-get install sngrep`; scripts/test installs it) and SIPp.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import HOST, free_port, wait_listening
from tests.support.server import StartServer
from tests.support.sipp import StartSipp, wait_caller_first

pytestmark = [pytest.mark.interop, pytest.mark.sipp]


@dataclass(frozen=True)
class Captured:
    """One UDP packet of the pcap sngrep wrote."""

    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes

    @property
    def start_line(self) -> str:
        return self.payload.split(b"\r\n", 1)[0].decode()

    def header(self, name: str) -> str:
        for line in self.payload.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            key, _, value = line.decode().partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return ""


def read_pcap(path: Path) -> list[Captured]:
    """The IPv4/UDP packets of a classic pcap file (Ethernet or raw IP link type)."""
    data = path.read_bytes()
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(magic)
    assert endian is not None, f"not a pcap file: {magic!r}"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_header = {1: 14, 101: 0, 228: 0}.get(linktype)
    assert link_header is not None, f"unexpected pcap link type {linktype}"
    packets, at = [], 24
    while at + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack(endian + "IIII", data[at : at + 16])
        frame = data[at + 16 : at + 16 + incl]
        at += 16 + incl
        ip = frame[link_header:]
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
        packets.append(Captured(
            sec + usec / 1e6,
            (socket.inet_ntoa(ip[12:16]), sport),
            (socket.inet_ntoa(ip[16:20]), dport),
            ip[ihl + 8 : ihl + length],
        ))
    return packets


@pytest.fixture
def sngrep() -> str:
    binary = shutil.which("sngrep")
    if binary is None:
        message = "sngrep not installed (apt-get install sngrep, or run scripts/test)"
        pytest.fail(message, pytrace=False)  # never a silent skip: scripts/test installs it
    return binary


@pytest.fixture
def hep_capture(sngrep: str, tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """A running `sngrep -N -q -L udp:127.0.0.1:P -O out.pcap`: (P, pcap path, process)."""
    port = free_port("udp")
    pcap = tmp_path / "out.pcap"
    log = (tmp_path / "sngrep.log").open("wb")
    proc = subprocess.Popen(
        [sngrep, "-N", "-q", "-L", f"udp:{HOST}:{port}", "-O", str(pcap)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, "udp")
        yield port, pcap, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


def test_sngrep_decodes_the_hep_of_a_call(
    hep_capture: tuple[int, Path, subprocess.Popen[bytes]],
    switchboard_server: StartServer,
    sipp: StartSipp,
    tmp_path: Path,
) -> None:
    hep_port, pcap, sngrep_proc = hep_capture
    server = switchboard_server("--hep", f"udp:{HOST}:{hep_port}", tcp=False)
    uas_port, uac_port = free_port("udp"), free_port("udp")
    started = time.time()
    uas = sipp("uas", "uas.xml", local_port=uas_port).wait_listening()
    uac = sipp("uac", "uac.xml", remote=f"{HOST}:{server.udp_port}", local_port=uac_port,
               keys={"uas_port": uas_port})
    uac_result, uas_result = wait_caller_first(uac, uas)
    assert not uac_result.problems(1) + uas_result.problems(1)

    sent = server.mi_result("statistics:get", statistics=["hep:"])
    assert sent["hep:dropped_packets"] == 0
    # Let sngrep take in the last datagrams, then stop it so it closes the pcap.
    deadline = time.monotonic() + 10
    while True:
        captured = read_pcap(pcap) if pcap.exists() and pcap.stat().st_size > 24 else []
        if len(captured) >= sent["hep:sent_packets"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    sngrep_proc.send_signal(signal.SIGTERM)
    sngrep_proc.wait(10)
    captured = read_pcap(pcap)
    log = (tmp_path / "sngrep.log").read_text(errors="replace")
    assert len(captured) == sent["hep:sent_packets"], (len(captured), sent, log)

    proxy = (HOST, server.udp_port)
    uac_addr, uas_addr = (HOST, uac_port), (HOST, uas_port)
    flows = [(c.src, c.dst, c.start_line.split(" ", 2)[:2]) for c in captured]
    # The call as the proxy saw it: every request and final answer, on both legs.
    expected = [
        (uac_addr, proxy, ["INVITE"]),
        (proxy, uas_addr, ["INVITE"]),
        (uas_addr, proxy, ["SIP/2.0", "200"]),
        (proxy, uac_addr, ["SIP/2.0", "200"]),
        (uac_addr, proxy, ["ACK"]),
        (proxy, uas_addr, ["ACK"]),
        (uac_addr, proxy, ["BYE"]),
        (proxy, uas_addr, ["BYE"]),
    ]
    for src, dst, start in expected:
        assert any(
            f[0] == src and f[1] == dst and f[2][: len(start)] == start for f in flows
        ), (src, dst, start, flows)
    call_ids = {c.header("Call-ID") for c in captured}
    assert len(call_ids) == 1 and "" not in call_ids, call_ids
    # Every packet is a whole SIP message as it went on the wire, time-stamped now.
    for c in captured:
        assert c.payload.endswith(b"\r\n\r\n") or b"\r\n\r\nv=0" in c.payload
        assert started - 5 < c.time < time.time() + 5
