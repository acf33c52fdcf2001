"""Would batching sends pay? One `sendto` per datagram against `sendmmsg` for a batch.

    python -m bench.sendbatch [--datagrams N] [--batch B]

Python's socket module has no `sendmmsg`, so the batch goes through ctypes (libc's
`sendmmsg`, one `mmsghdr` per datagram). Both send 600-byte datagrams over loopback UDP to
a socket nobody is waiting on (so no receiver wake-up is counted) and count the sender's
CPU time. The answer decides issue 4's "batching sends": if a batch cannot beat a plain
`sendto` even before the receiver's wake-up (which a batch does not save: each datagram is
still delivered and queued one by one), the proxy keeps sending each datagram as it is ready.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import time

PAYLOAD = b"x" * 600


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                ("addr", ctypes.c_uint32), ("zero", ctypes.c_char * 8)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(2048)
    except BlockingIOError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sendbatch")
    parser.add_argument("--datagrams", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    n, batch = args.datagrams, args.batch
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    dest = rx.getsockname()

    start = time.process_time()
    for _ in range(n):
        tx.sendto(PAYLOAD, dest)
    one_by_one = time.process_time() - start
    _drain(rx)

    addr = _SockaddrIn(socket.AF_INET, socket.htons(dest[1]),
                       int.from_bytes(socket.inet_aton("127.0.0.1"), "little"))
    start = time.process_time()
    for _ in range(0, n, batch):
        msgs = (_MMsgHdr * batch)()
        iovs = (_IoVec * batch)()
        buffers = []
        for j in range(batch):
            buffer = ctypes.create_string_buffer(PAYLOAD, len(PAYLOAD))
            buffers.append(buffer)
            iovs[j].base = ctypes.addressof(buffer)
            iovs[j].len = len(PAYLOAD)
            msgs[j].hdr.name = ctypes.addressof(addr)
            msgs[j].hdr.namelen = ctypes.sizeof(addr)
            msgs[j].hdr.iov = ctypes.pointer(iovs[j])
            msgs[j].hdr.iovlen = 1
        libc.sendmmsg(tx.fileno(), msgs, batch, 0)
    batched = time.process_time() - start
    _drain(rx)
    print(f"sendto: {one_by_one / n * 1e6:.2f} us per datagram; "
          f"sendmmsg via ctypes, {batch} per call: {batched / n * 1e6:.2f} us per datagram")


if __name__ == "__main__":
    main()
