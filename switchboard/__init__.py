"""switchboard: a SIP call controller (record-routing proxy with transfer, hold and events)."""

__version__ = "0.1.0"
