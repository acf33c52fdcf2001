"""Coverage-guided fuzzing (atheris / libFuzzer) of the SIP parser and the stream framer.

One input is one byte string. It is parsed three ways (datagram, stream, without the body
check, as the proxy does to answer a broken request), every accessor a proxy reads is
touched, whatever parses must print (`to_bytes()`) as a message that parses back to the same
start line, headers and body, and the parsed Via, address and Request-URI values must print
as text that parses again. The same bytes are fed to a `StreamFramer` whole and in small
chunks: both must cut the same messages. Anything but `ParseError` escaping is a crash.

    python tests/fuzz/fuzz_parser.py [libFuzzer flags] [CORPUS_DIR ...]

The parser runs from its Python source (SWITCHBOARD_PURE=1), which atheris can instrument for
coverage; `SWITCHBOARD_PURE=0 ... -runs=0 DIR` replays a corpus through the mypyc-compiled
build instead.

With no corpus directory, new inputs go to a temporary directory and the recorded messages
in tests/data (and tests/data/malformed) are the seeds; named directories come first (the
first one receives what libFuzzer finds), the seeds are added after them. See README.md.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # runnable from anywhere without installing the package
    sys.path.insert(0, str(REPO))
from tests.support.fuzz import libfuzzer_arguments, load_core  # noqa: E402

load_core("fuzz_parser")
with atheris.instrument_imports(include=["switchboard.sip"]):
    from switchboard.sip.errors import ParseError
    from switchboard.sip.framing import StreamFramer
    from switchboard.sip.headers import parse_via
    from switchboard.sip.message import Message, Request, parse_message
    from switchboard.sip.uri import parse_name_addr, parse_uri
from tests.unit.kit.message import read_every_value  # noqa: E402  (after the instrumented core)

DATA = REPO / "tests" / "data"
SEEDS = [DATA, DATA / "malformed"]
# Re-parsing what we printed must not trip over the size limit: printing turns bare LFs
# into CRLFs, so a message just under the limit may print just over it.
NO_LIMIT = 1 << 30


def _touch(msg: Message) -> None:
    """Read every structured value a proxy reads; each may raise only ParseError."""
    read_every_value(msg)
    _reprint_values(msg)


def _reprint_values(msg: Message) -> None:
    """Parsed values we print (a forwarded Via, Record-Route, Request-URI) parse again."""
    try:
        vias = msg.vias
    except ParseError:
        vias = []
    for via in vias:
        assert parse_via(str(via)) == via, (str(via), via)
    for key in ("from", "to", "contact", "route", "record-route"):
        try:
            addresses = msg.addresses(key)
        except ParseError:
            continue
        for address in addresses:
            assert parse_name_addr(str(address)) == address, (str(address), address)
    if isinstance(msg, Request):
        try:
            ruri = msg.ruri
        except ParseError:
            return
        assert parse_uri(str(ruri)) == ruri, (str(ruri), ruri)


def _check_round_trip(msg: Message) -> None:
    """What we parsed, we print as a message that parses to the same thing."""
    out = msg.to_bytes()
    again = parse_message(out, max_size=NO_LIMIT)
    assert again.start_line() == msg.start_line(), (again.start_line(), msg.start_line())
    assert [h for h in again.headers if h[0] != "content-length"] == [
        h for h in msg.headers if h[0] != "content-length"
    ], (again.headers, msg.headers)
    assert again.body == msg.body
    assert again.to_bytes() == out


def _frame(data: bytes, chunk: int) -> tuple[list[bytes], bool]:
    """The messages a framer cuts from `data` fed `chunk` bytes at a time, and whether the
    stream broke (ParseError) before the end."""
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        try:
            out += framer.feed(data[i : i + chunk])
        except ParseError:
            return out, True
    return out, False


def _check_framer(data: bytes) -> None:
    whole, whole_broke = _frame(data, max(len(data), 1))
    chunk = zlib.crc32(data) % 61 + 1
    pieces, pieces_broke = _frame(data, chunk)
    # A framer that breaks may have cut fewer messages before noticing; one that does not
    # break must cut the same messages however the bytes arrive.
    if not whole_broke and not pieces_broke:
        assert pieces == whole, (chunk, pieces, whole)
    elif whole_broke != pieces_broke:
        raise AssertionError(f"framing broke {'only whole' if whole_broke else 'only chunked'}")
    for message in whole:
        try:
            parsed = parse_message(message, datagram=False)
        except ParseError:
            continue
        _touch(parsed)


def test_one_input(data: bytes) -> None:
    for options in ({}, {"datagram": False}, {"check_body": False}):
        try:
            msg = parse_message(data, **options)  # type: ignore[arg-type]
        except ParseError:
            continue
        _touch(msg)
        _check_round_trip(msg)
    _check_framer(data)


def main(argv: list[str]) -> None:
    # The 4 kB default -max_len: oversize.sip (66 kB) must fit; libFuzzer's default would be
    # the largest seed anyway.
    flags, dirs = libfuzzer_arguments(argv, "fuzz_parser")
    seeds = [str(p) for p in SEEDS if str(p) not in dirs]
    atheris.Setup([argv[0], *flags, *dirs, *seeds], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
