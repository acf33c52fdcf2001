"""The bytes of one event: a JSON-RPC 2.0 notification, as OpenSIPS' event transports send it,
or a webhook's body.

`{"jsonrpc":"2.0","method":"E_CALL_HOLD","params":{"callid":...}}` — compact, no `id` (a
notification), params in the order the raiser gave them, as UTF-8; a byte of wire text that
is not UTF-8 (a Call-ID, a tag) comes out as `\\xNN` (`switchboard.readout`). The `udp:` and
`tcp:` sinks send these bytes; webhooks get `encode_webhook`'s. Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from switchboard.readout import json_bytes


def encode_event(event: str, params: Mapping[str, Any]) -> bytes:
    """Serialize one event. Raises TypeError for values JSON cannot carry."""
    envelope = {"jsonrpc": "2.0", "method": event, "params": dict(params)}
    # ensure_ascii=False: subscribers get UTF-8 as OpenSIPS (cJSON) sends it, not \u escapes.
    return json_bytes(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))


# The parameter naming the tracked operation an event belongs to; a webhook body repeats it at
# the top level, so a receiver can match the event to the request that caused it.
OPERATION_ID: Final = "operation_id"


def encode_webhook(event: str, params: Mapping[str, Any], event_id: str) -> bytes:
    """A webhook's body: `{"id":...,"event":...,"params":{...}}`, with `"operation_id"` when the
    params carry one. `event_id` is the same in every retry of the event (a receiver may see
    it twice when an answer was lost). Raises TypeError for values JSON cannot carry."""
    body: dict[str, Any] = {"id": event_id, "event": event, "params": dict(params)}
    operation = params.get(OPERATION_ID)
    if operation is not None:
        body[OPERATION_ID] = operation
    return json_bytes(json.dumps(body, separators=(",", ":"), ensure_ascii=False))
