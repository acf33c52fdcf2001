"""The bytes of one event: a JSON-RPC 2.0 notification, as OpenSIPS' event transports send it.

`{"jsonrpc":"2.0","method":"E_CALL_HOLD","params":{"callid":...}}` — compact, no `id` (a
notification), params in the order the raiser gave them. Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def encode_event(event: str, params: Mapping[str, Any]) -> bytes:
    """Serialize one event. Raises TypeError for values JSON cannot carry."""
    envelope = {"jsonrpc": "2.0", "method": event, "params": dict(params)}
    # ensure_ascii=False: subscribers get UTF-8 as OpenSIPS (cJSON) sends it, not \u escapes.
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
