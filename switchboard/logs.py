"""Logging set-up: JSON lines for log collectors, or readable text for a terminal.

Context goes in `extra=` with the names below, and each format shows what was given:

    log.info("transfer started", extra={"event": "transfer_start", "call_id": cid,
                                        "dialog_id": did, "worker": 0})

JSON: `{"ts": "...Z", "level": "info", "logger": "...", "event": ..., "message": ...,
"call_id": ..., ...}`, one object per line. Text: `TIME LEVEL logger: message key=value ...`
(the context keys; `event` is left out there).
Both formats mask `Authorization` / `Proxy-Authorization` values at every level and cut SDP
bodies from records at INFO and above, in messages as in their reprs (`b'...\\r\\nv=0...'`).
Both write every line as text any UTF-8 stream takes: a byte of wire text that is not UTF-8
(a lone surrogate, as the SIP parser decodes it) shows as `\\xNN` (`switchboard.readout`).
This module knows log records, not SIP.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Any, Final, Literal, TextIO

from .readout import json_text, plain_text

LogFormat = Literal["json", "text"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("json", "text")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# What a record may carry in `extra=`, in the order the formats show it.
CONTEXT_KEYS: Final = (
    "call_id", "dialog_id", "worker", "node", "branch", "leg", "source", "user", "method",
)

# A header value runs to the end of its line: a real line break or an escaped one in a repr.
_AUTH = re.compile(
    r"((?:^|(?<=[^a-z-])|(?<=\\n))(?:proxy-)?authorization[ \t]*:)((?:(?!\\r|\\n)[^\r\n])*)",
    re.I,
)
_BREAK = r"(?:\r\n|\n|\\r\\n|\\n)"
_SDP_LINE = r"[a-z]=(?:(?!\\r|\\n)[^\r\n'\"])*"
_SDP = re.compile(rf"(?:^|(?<=\n)|(?<=\\n))v=0(?:{_BREAK}{_SDP_LINE})+(?:{_BREAK})?", re.M)

REDACTED: Final = "<redacted>"
SDP_REDACTED: Final = "<sdp redacted>"


def redact(text: str, *, sdp: bool = True) -> str:
    """`text` with credentials masked, and SDP bodies cut when `sdp` is true."""
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH.sub(rf"\1 {REDACTED}", text)
    if sdp and "v=0" in text:
        text = _SDP.sub(SDP_REDACTED, text)
    return text


def _message(record: logging.LogRecord) -> str:
    return redact(record.getMessage(), sdp=record.levelno >= logging.INFO)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        value = getattr(record, key, None)
        if value is not None:
            out[key] = redact(value) if isinstance(value, str) else value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = str(event)
        out["message"] = _message(record)
        out.update(_context(record))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json_text(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """`2026-01-02 03:04:05,678 INFO logger: message call_id=... dialog_id=...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return plain_text(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        line = super().formatMessage(record)
        # The event name is for machines; a reader has the message.
        context = _context(record)
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return line

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler `setup_logging` installed, so a second call replaces it."""


def setup_logging(
    fmt: LogFormat = "text", level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `fmt`, from `level` up."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
