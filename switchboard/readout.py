"""Wire text at the read-out edges: what becomes of a byte that is not UTF-8.

The SIP parser decodes a message's header section with `surrogateescape` (`sip/message.py`):
a byte that is not UTF-8, wherever it stands (a From or To URI, a Contact, a display name, a
Call-ID, a tag, a Route), becomes a lone surrogate U+DC80..U+DCFF in a `str`, and the core
relays it byte for byte. Such a `str` has no UTF-8 form, so each edge that writes wire text
out decides what the byte becomes there:

- MI answers (`mi/dispatch.py`; in `dialog:list`: `callid`, `from_uri`, `to_uri`, the tags,
  contacts and route sets), events to every sink (`events/envelope.py`: `callid`, the tags,
  `transfer_callid`, `destination`, `status`) and JSON log lines (`logs.py`: the message, the
  context keys, a traceback): the four characters `\\xNN` — in the JSON text `"\\\\xNN"`,
  valid UTF-8 and valid JSON.
- Text log lines (`logs.py`): `\\xNN` as well.
- The SDPs in `dialog:list` (`actors/dialog.py`, `caller_sdp` / `callee_sdp`, kept as bytes):
  decoded with "replace", so U+FFFD.
- msgpack (`pack` / `unpack` here: what `cluster/ray_runtime.py` sends between actors, its
  batches of events and its dialog snapshots among them): the byte itself, packed and
  unpacked with `surrogateescape`; a restored dialog relays the same bytes.
- HEP (`hep.py`): the byte itself; the message goes out as the bytes it was.
- Metric labels (`metrics.py`): no label value is wire text; they come from fixed lists.

Any other lone surrogate (the parser makes none; a management request may send one as a JSON
escape) is written as `\\uXXXX`: in JSON, the escape of that code point.

Both are codec error handlers, registered when this module is imported: the usual path is
one `str.encode("utf-8", ...)`, and a handler runs only for text that needs it. That is safe
for JSON because `json.dumps` writes nothing but ASCII outside strings: every surrogate it
leaves in its output stands inside a string literal. This module knows text and msgpack,
not SIP.
"""

from __future__ import annotations

import codecs
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]  # no stubs, no py.typed

# Codec error handler names (`str.encode("utf-8", JSON_ERRORS)`).
JSON_ERRORS: Final = "switchboard-json"
TEXT_ERRORS: Final = "switchboard-text"

_LOW, _HIGH = 0xDC80, 0xDCFF  # what surrogateescape makes of bytes 0x80..0xFF


def _escape(exc: UnicodeError, byte_form: str) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start:exc.end]:
        code = ord(ch)
        if _LOW <= code <= _HIGH:
            out.append(byte_form % (code - 0xDC00))
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), exc.end


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    # `\\` in JSON is one backslash: the string's value holds the four characters `\xNN`.
    return _escape(exc, "\\\\x%02x")


def _text_escape(exc: UnicodeError) -> tuple[str, int]:
    return _escape(exc, "\\x%02x")


codecs.register_error(JSON_ERRORS, _json_escape)
codecs.register_error(TEXT_ERRORS, _text_escape)


def json_bytes(text: str) -> bytes:
    """UTF-8 of `text`, JSON as `json.dumps(..., ensure_ascii=False)` writes it, with any
    lone surrogate escaped (a wire byte as `\\\\xNN`, another as `\\uXXXX`): valid JSON."""
    return text.encode("utf-8", JSON_ERRORS)


def json_text(text: str) -> str:
    """`json_bytes` as a `str` that any UTF-8 stream can take (a log line)."""
    if text.isascii():
        return text
    return text.encode("utf-8", JSON_ERRORS).decode("utf-8")


def plain_text(text: str) -> str:
    """`text` for people: a wire byte that is not UTF-8 as `\\xNN`, any other lone surrogate
    as `\\uXXXX`; text without them comes back as it is."""
    if text.isascii():
        return text
    return text.encode("utf-8", TEXT_ERRORS).decode("utf-8")


def pack(obj: Any) -> bytes:
    """msgpack of `obj` (str, bytes, int, float, bool, None, list, tuple, dict); a wire byte
    that is not UTF-8 goes in a str as that byte."""
    data: bytes = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")
    return data


def unpack(data: bytes) -> Any:
    """What `pack` packed (tuples come back as lists)."""
    return msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")
