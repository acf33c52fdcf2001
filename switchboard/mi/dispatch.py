"""JSON-RPC 2.0 request handling, exactly as the OpenSIPS MI core does it (`mi/mi.c`).

Text in, text out: parse one request, validate it (-32700 / -32600), find the command
(-32601), match its recipe (-32602), run the handler, and build the response. A
`CommandError` becomes its own code and message; any other exception becomes -32000
"Server error" and is logged, never propagated. A notification (no `id`) gets no response,
unless the request could not even be parsed or validated (OpenSIPS answers those with
`"id": null`). Transports (`http`) decide how "no response" looks on the wire.

Answers carry wire text (`dialog:list`): a byte that is not UTF-8 comes out as `\\xNN`
(`switchboard.readout`), so every answer is valid UTF-8 and valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Final

from switchboard.api import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    CommandError,
)
from switchboard.mi.registry import CommandContext, match_recipe
from switchboard.readout import json_bytes

log = logging.getLogger(__name__)

# What OpenSIPS puts in `data` when a handler fails without saying why.
HANDLER_FAILED: Final = "Command handler returned null"

_MISSING: Final = object()

# List items of a result encoded between two turns of the event loop (~10 ms of work).
# `dialog:list` of 100,000 calls is ~100 MB of JSON: encoded in one go it held SIP up for
# over a second.
ENCODE_SLICE: Final = 500


def error_response(
    request_id: Any, code: int, message: str, data: str | None = None
) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, although Python's parser accepts them by default.
    raise ValueError(f"invalid JSON constant {name}")


def _valid_id(value: Any) -> bool:
    # A float the answer could not carry back (`1e400` parses as infinity) is no id either.
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


async def handle_request(body: bytes | str, ctx: CommandContext) -> dict[str, Any] | None:
    """Run one JSON-RPC request; the response object, or None when none is due."""
    try:
        request = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        return error_response(None, PARSE_ERROR, "Parse error")

    # Batches are not supported by OpenSIPS either: an array is not a Request object.
    if not isinstance(request, dict):
        return error_response(None, INVALID_REQUEST, "Invalid Request")
    is_notification = "id" not in request
    request_id = request.get("id")
    method = request.get("method", _MISSING)
    params = request.get("params")
    if (
        not _valid_id(request_id)
        or request.get("jsonrpc") != "2.0"
        or not isinstance(method, str)
        or ("params" in request and not isinstance(params, list | dict))
    ):
        return error_response(
            request_id if _valid_id(request_id) else None, INVALID_REQUEST, "Invalid Request"
        )

    command = ctx.registry.lookup(method)
    if command is None:
        response = error_response(request_id, METHOD_NOT_FOUND, "Method not found")
    else:
        try:
            result = await command.handler(ctx, match_recipe(command, params))
        except CommandError as exc:
            response = error_response(request_id, exc.code, exc.message, exc.data)
        except Exception:
            log.exception("MI command %s failed", method)
            response = error_response(request_id, SERVER_ERROR, "Server error", HANDLER_FAILED)
        else:
            response = {"jsonrpc": "2.0", "result": result, "id": request_id}
    return None if is_notification else response


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode_failed(response: dict[str, Any]) -> str:
    log.exception("MI response cannot be encoded as JSON")
    fallback = error_response(response.get("id"), SERVER_ERROR, "Server error", HANDLER_FAILED)
    return json.dumps(fallback, separators=(",", ":"), ensure_ascii=False)


def encode_response(response: dict[str, Any]) -> bytes:
    """Compact JSON bytes of a response; a result JSON cannot carry becomes -32000."""
    try:
        text = _dumps(response)
    except (TypeError, ValueError):
        text = _encode_failed(response)
    return json_bytes(text)


def _is_long(value: Any) -> bool:
    return isinstance(value, list) and len(value) > ENCODE_SLICE


async def encode_response_parts(response: dict[str, Any]) -> list[bytes]:
    """The bytes of `encode_response`, in parts; a long list in the result is encoded a
    slice at a time with the loop turning in between, so calls keep flowing meanwhile.

    Consumes those lists: each slice is let go once encoded, so that freeing 100,000
    dialogs' objects is spread over the same turns (all at once it stalled SIP ~0.4 s)."""
    result = response.get("result")
    if (list(response) != ["jsonrpc", "result", "id"] or not isinstance(result, dict)
            or not any(_is_long(value) for value in result.values())):
        return [encode_response(response)]
    parts = [b'{"jsonrpc":"2.0","result":{']
    try:
        for index, (key, value) in enumerate(result.items()):
            parts.append(json_bytes(("," if index else "") + _dumps(key) + ":"))
            if not _is_long(value):
                parts.append(json_bytes(_dumps(value)))
                continue
            parts.append(b"[")
            for start in range(0, len(value), ENCODE_SLICE):
                if start:
                    parts.append(b",")
                    await asyncio.sleep(0)
                chunk = value[start:start + ENCODE_SLICE]
                parts.append(json_bytes(_dumps(chunk)[1:-1]))
                value[start:start + len(chunk)] = [None] * len(chunk)
            parts.append(b"]")
        parts.append(json_bytes('},"id":' + _dumps(response["id"]) + "}"))
    except (TypeError, ValueError):
        return [json_bytes(_encode_failed(response))]
    return parts


async def dispatch(body: bytes | str, ctx: CommandContext) -> bytes | None:
    """`handle_request` + `encode_response`: request bytes in, response bytes (or None) out."""
    response = await handle_request(body, ctx)
    return None if response is None else encode_response(response)


async def dispatch_parts(body: bytes | str, ctx: CommandContext) -> list[bytes] | None:
    """`dispatch` for a transport that can send an answer in parts (`encode_response_parts`)."""
    response = await handle_request(body, ctx)
    return None if response is None else await encode_response_parts(response)
