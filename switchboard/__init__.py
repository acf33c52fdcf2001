"""switchboard: a SIP call controller (record-routing proxy with transfer, hold and events)."""

__version__ = "0.1.0"

from ._native import choose as _choose

# Before anything imports the SIP core: its compiled build, or its source (see _native).
COMPILED, BUILD = _choose()
