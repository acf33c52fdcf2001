"""Logging: JSON lines and text, context from `extra=`, redaction, set-up and [log] config."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.config import ConfigError, LogConfig, apply_overrides, parse_config
from switchboard.logs import (
    REDACTED,
    SDP_REDACTED,
    JsonFormatter,
    TextFormatter,
    redact,
    setup_logging,
)

DATA = Path(__file__).resolve().parents[1] / "data"

AUTH_INVITE = (
    "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
    'Authorization: Digest username="alice", realm="x", nonce="n", response="0123abcd"\r\n'
    "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
    "Content-Type: application/sdp\r\n"
    "\r\n"
)
SDP = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SECRETS = ("0123abcd", "YWxpY2U6c2VjcmV0", "10.0.0.1", "m=audio")


def record(
    message: str, *args: object, level: int = logging.INFO, **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord("switchboard.test", level, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_the_fields_and_context() -> None:
    rec = record(
        "transfer of %s started", "call-1", event="transfer_start", call_id="call-1",
        dialog_id="1.2f", worker=0,
    )
    rec.created = 1_767_225_600.5  # 2026-01-01T00:00:00.5Z
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2026-01-01T00:00:00.500Z",
        "level": "info",
        "logger": "switchboard.test",
        "event": "transfer_start",
        "message": "transfer of call-1 started",
        "call_id": "call-1",
        "dialog_id": "1.2f",
        "worker": 0,
    }
    # Without context only the basics.
    assert set(json.loads(JsonFormatter().format(record("plain")))) == {
        "ts", "level", "logger", "message",
    }


def test_json_keeps_exceptions_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = record("failed", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "error"
    assert "ValueError: boom" in out["exc"]


def test_text_line_is_readable_with_context() -> None:
    line = TextFormatter().format(record("hold sent", event="hold", call_id="c-9", leg="caller"))
    assert line.endswith("INFO switchboard.test: hold sent call_id=c-9 leg=caller")
    assert TextFormatter().format(record("plain")).endswith("INFO switchboard.test: plain")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_sdp_or_credentials_at_info(formatter: logging.Formatter) -> None:
    message = AUTH_INVITE + SDP
    for rec in (
        record("relayed %s", message),
        record("relayed %r", message.encode()),  # a repr: escaped line breaks
        record("relayed", call_id="c", branch=message),  # context values too
    ):
        out = formatter.format(rec)
        for secret in SECRETS:
            assert secret not in out, (secret, out)
        assert REDACTED in out
    # Credentials are masked at DEBUG too; SDP is kept there for troubleshooting.
    debug = formatter.format(record("relayed %s", message, level=logging.DEBUG))
    assert "0123abcd" not in debug and "YWxpY2U6c2VjcmV0" not in debug
    assert "m=audio 4000" in debug.replace("\\r\\n", "\r\n")


def test_json_line_carries_a_security_events_source_user_and_method() -> None:
    rec = record("digest failed", event="auth_failed", source="udp:127.0.0.66:5060",
                 user="alice", method="REGISTER")
    out = json.loads(JsonFormatter().format(rec))
    assert (out["source"], out["user"], out["method"]) == ("udp:127.0.0.66:5060", "alice",
                                                           "REGISTER")
    assert list(out)[-3:] == ["source", "user", "method"]
    line = TextFormatter().format(rec)
    assert line.endswith("source=udp:127.0.0.66:5060 user=alice method=REGISTER")


def test_wire_bytes_that_are_not_utf8_leave_every_line_valid_utf8() -> None:
    """The parser keeps such a byte as a lone surrogate; a log line shows it as \\xNN."""
    user = "jos\udce9\udcff"  # what b"jos\xe9\xff" parses to
    try:
        raise ValueError(f"bad From {user}")
    except ValueError:
        import sys

        rec = record("refused %s", f"sip:{user}@h", level=logging.WARNING, user=user,
                     call_id="c\udc80", method="INVITE")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    line.encode("utf-8")
    out = json.loads(line)
    assert out["message"] == "refused sip:jos\\xe9\\xff@h"
    assert (out["user"], out["call_id"]) == ("jos\\xe9\\xff", "c\\x80")
    assert "bad From jos\\xe9\\xff" in out["exc"]
    text = TextFormatter().format(rec)
    text.encode("utf-8")
    assert "refused sip:jos\\xe9\\xff@h" in text and "user=jos\\xe9\\xff" in text
    # Through a handler onto a strict UTF-8 stream, as in production.
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    for formatter in (JsonFormatter(), TextFormatter()):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.emit(rec)
    stream.flush()
    written = stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    assert json.loads(written.splitlines()[0])["user"] == "jos\\xe9\\xff"
    assert "user=jos\\xe9\\xff" in written


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("v=0 is a value", "X-Authorization-Hint: keep", "dialog 1.2f confirmed"):
        assert redact(text) == text
    sip = (DATA / "resp-200-invite-sdp.sip").read_text()
    cut = redact(sip)
    assert SDP_REDACTED in cut and "m=audio" not in cut
    assert cut.startswith("SIP/2.0 200")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_setup_logging_installs_one_handler(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("text", "debug", stream)
    handler = setup_logging("json", "warning", stream)  # replaces, does not add
    assert sum(h is handler for h in root_logger.handlers) == 1
    assert len([h for h in root_logger.handlers if type(h) is type(handler)]) == 1
    logging.getLogger("switchboard.x").info("hidden")
    logging.getLogger("switchboard.x").warning("shown", extra={"call_id": "c"})
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]
    assert json.loads(lines[0])["call_id"] == "c"
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml", "info", stream)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        setup_logging("json", "loud", stream)


def test_log_config() -> None:
    assert parse_config("").log == LogConfig("text", "info")
    config = parse_config('[log]\nformat = "json"\nlevel = "WARNING"\n')
    assert config.log == LogConfig("json", "warning")
    flagged = apply_overrides(config, log_format="text", log_level="debug")
    assert flagged.log == LogConfig("text", "debug")
    assert apply_overrides(config).log == config.log
    with pytest.raises(ConfigError, match="--log-level"):
        apply_overrides(config, log_level="chatty")


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('[log]\nformat = "yaml"\n', "log.format", 2),
        ('[log]\nformat = "json"\nlevel = "verbose"\n', "log.level", 3),
        ("[log]\nlevel = 10\n", "log.level", 2),
        ('[log]\ncolour = "yes"\n', "log.colour", 2),
    ],
)
def test_log_config_errors_name_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="sb.toml")
    assert (err.value.key, err.value.line) == (key, line)
