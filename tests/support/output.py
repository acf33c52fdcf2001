"""A process's output cut down for a failure message: the end of a long text, a log file read
without failing."""

from __future__ import annotations

from pathlib import Path


def tail(text: str, lines: int = 60, chars: int = 6000) -> str:
    """The end of `text`: at most `lines` lines and `chars` characters (SIPp's error log
    runs its entries together on one line)."""
    parts = text.splitlines()
    cut = len(parts) - lines
    if cut > 0:
        text = "\n".join(parts[-lines:])
    if len(text) > chars:
        text = text[-chars:]
        cut = max(cut, 1)
    return f"[... earlier output cut ...]\n{text}" if cut > 0 else text


def read_text(path: Path) -> str:
    """The file's text, or "" when it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
