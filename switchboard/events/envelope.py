"""The bytes of one event: a JSON-RPC 2.0 notification, as OpenSIPS' event transports send it.

`{"jsonrpc":"2.0","method":"E_CALL_HOLD","params":{"callid":...}}` — compact, no `id` (a
notification), params in the order the raiser gave them, as UTF-8; a byte of wire text that
is not UTF-8 (a Call-ID, a tag) comes out as `\\xNN` (`switchboard.readout`). Every sink
type sends these bytes. Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from switchboard.readout import json_bytes


def encode_event(event: str, params: Mapping[str, Any]) -> bytes:
    """Serialize one event. Raises TypeError for values JSON cannot carry."""
    envelope = {"jsonrpc": "2.0", "method": event, "params": dict(params)}
    # ensure_ascii=False: subscribers get UTF-8 as OpenSIPS (cJSON) sends it, not \u escapes.
    return json_bytes(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))
