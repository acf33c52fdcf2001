"""The OpenAPI 3.1 document of the REST API (`GET /openapi.json`).

Written out by hand, beside the routes it describes; the tests check it with a validator and
run property-based tests from it against a live server, so it cannot drift from them.
"""

from __future__ import annotations

from typing import Any, Final

from switchboard import __version__
from switchboard.events import KNOWN_EVENTS

from .calls import STATES

_PROBLEM: Final = {"$ref": "#/components/responses/Problem"}
_CALL_PARAM: Final = {
    "name": "call", "in": "path", "required": True,
    "description": "The Call-ID or the dialog id (as `dialog:list` shows it) of a live call.",
    "schema": {"type": "string", "minLength": 1},
}
_IDEMPOTENCY: Final = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A retry with the same key gets the first answer; nothing is sent twice.",
    "schema": {"type": "string", "pattern": "^[ -~]{1,255}$"},
}
_LEG: Final = {"type": "string", "enum": ["caller", "callee"]}
_TEXT_OR_NULL: Final = {"type": ["string", "null"]}


def _operation_responses() -> dict[str, Any]:
    return {
        "202": {
            "description": "Accepted: the request went out; follow the operation.",
            "headers": {"Location": {"schema": {"type": "string"},
                                     "description": "The operation's URL."}},
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Operation"}}},
        },
        "400": _PROBLEM, "401": _PROBLEM, "404": _PROBLEM, "409": _PROBLEM,
        "422": _PROBLEM, "502": _PROBLEM,
    }


def _call_operation(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [_IDEMPOTENCY],
        "responses": _operation_responses(),
    }
    if body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": body}}}
    return op


def document() -> dict[str, Any]:
    step = {
        "type": "object",
        "required": ["at", "step", "leg", "status"],
        "properties": {
            "at": {"type": "number", "description": "Unix time"},
            "step": {"type": "string", "description":
                     "accepted, sent, or the event's state: start, linked, notify, ok, fail"},
            "leg": _TEXT_OR_NULL,
            "status": {**_TEXT_OR_NULL, "description": "SIP status line, e.g. 486 Busy Here"},
        },
    }
    operation = {
        "type": "object",
        "required": ["id", "kind", "call_id", "state", "sip_status", "created_at",
                     "updated_at", "steps"],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["transfer", "hold", "unhold", "end"]},
            "call_id": {"type": "string"},
            "leg": _TEXT_OR_NULL,
            "state": {"type": "string", "enum": ["pending", "ok", "fail"]},
            "sip_status": {"type": ["integer", "null"]},
            "reason": _TEXT_OR_NULL,
            "transfer_callid": _TEXT_OR_NULL,
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        },
    }
    leg = {
        "type": "object",
        "required": ["leg", "tag", "contact", "media", "on_hold"],
        "properties": {
            "leg": _LEG,
            "tag": {"type": "string"},
            "contact": {"type": "string"},
            "media": {"type": ["string", "null"],
                      "enum": ["sendrecv", "sendonly", "recvonly", "inactive", None]},
            "on_hold": {"type": "boolean"},
        },
    }
    link = {
        "type": "object",
        "required": ["call_id", "direction", "state"],
        "properties": {
            "call_id": {"type": "string"},
            "direction": {"type": "string", "enum": ["to", "from"]},
            "leg": _TEXT_OR_NULL,
            "destination": _TEXT_OR_NULL,
            "state": {"type": "string", "enum": ["linked", "ok", "fail"]},
        },
    }
    call = {
        "type": "object",
        "required": ["id", "call_id", "state", "from", "to", "legs", "hold", "transfers"],
        "properties": {
            "id": {"type": "string", "description": "dialog id"},
            "call_id": {"type": "string"},
            "state": {"type": "string", "enum": [*STATES, "unknown"]},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "from_user": {"type": "string"},
            "to_user": {"type": "string"},
            "started_at": {"type": "number"},
            "legs": {"type": "array", "items": {"$ref": "#/components/schemas/Leg"}},
            "hold": {"type": "string", "enum": ["none", "caller", "callee", "both"]},
            "transfers": {"type": "array",
                          "items": {"$ref": "#/components/schemas/TransferLink"}},
        },
    }
    problem = {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "field": {"type": "string", "description": "the input at fault"},
            "sip_status": {"type": "integer", "description": "the status the core refused with"},
        },
    }
    transfer_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["leg"],
        "description": "Blind: leg and destination. Attended: leg, transfer_callid and "
                       "transfer_leg (destination optional), or transfer_callid, "
                       "transfer_fromtag, transfer_totag and destination.",
        "properties": {
            "leg": _LEG,
            "destination": {"type": "string"},
            "transfer_callid": {"type": "string"},
            "transfer_leg": _LEG,
            "transfer_fromtag": {"type": "string"},
            "transfer_totag": {"type": "string"},
        },
    }
    message = {
        "type": "object",
        "required": ["at", "direction", "peer", "local", "first_line", "cseq"],
        "properties": {
            "at": {"type": "number", "description": "Unix time"},
            "direction": {"type": "string", "enum": ["in", "out"],
                          "description": "in: from peer to local; out: local to peer"},
            "peer": {"type": "string", "description": "transport:host:port"},
            "local": {"type": "string", "description": "our address, transport:host:port"},
            "first_line": {"type": "string", "description": "request or status line"},
            "cseq": {"type": "string", "description": "e.g. 1 INVITE; empty when absent"},
        },
    }
    capture = {
        "type": "object",
        "required": ["enabled", "until", "calls", "max_calls", "max_messages"],
        "properties": {
            "enabled": {"type": "boolean"},
            "until": {"type": ["number", "null"],
                      "description": "Unix time the capture stops unless renewed"},
            "calls": {"type": "integer", "description": "calls with captured messages"},
            "max_calls": {"type": "integer"},
            "max_messages": {"type": "integer", "description": "kept per call"},
        },
    }
    capture_answer = {"description": "The capture", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Capture"}}}}
    hold_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "leg": {"type": "string", "enum": ["caller", "callee", "both"]},
            "headers": {"oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            ]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "switchboard", "version": __version__,
                 "description": "Live calls of a switchboard node and the operations on "
                                "them. Errors are RFC 9457 problem details."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/calls": {"get": {
                "summary": "Live calls, a page at a time",
                "parameters": [
                    {"name": "state", "in": "query",
                     "schema": {"type": "string", "enum": list(STATES)}},
                    {"name": "from_user", "in": "query", "schema": {"type": "string"}},
                    {"name": "to_user", "in": "query", "schema": {"type": "string"}},
                    {"name": "cursor", "in": "query",
                     "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    "200": {"description": "A page of calls", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["calls", "next_cursor"],
                                   "properties": {
                                       "calls": {"type": "array", "items": {
                                           "$ref": "#/components/schemas/Call"}},
                                       "next_cursor": _TEXT_OR_NULL}}}}},
                    "401": _PROBLEM, "422": _PROBLEM,
                },
            }},
            "/api/v1/calls/{call}": {
                "parameters": [_CALL_PARAM],
                "get": {
                    "summary": "One call: legs, state, hold state, transfer links",
                    "responses": {
                        "200": {"description": "The call", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Call"}}}},
                        "401": _PROBLEM, "404": _PROBLEM,
                    },
                },
                "delete": _call_operation("End the call (BYE both ways, CANCEL when early)",
                                          None),
            },
            "/api/v1/calls/{call}/transfer": {
                "parameters": [_CALL_PARAM],
                "post": _call_operation("Transfer a leg: blind or attended",
                                        {"$ref": "#/components/schemas/TransferRequest"}),
            },
            "/api/v1/calls/{call}/hold": {
                "parameters": [_CALL_PARAM],
                "post": _call_operation("Put a leg (or both) on hold",
                                        {"$ref": "#/components/schemas/HoldRequest"}),
            },
            "/api/v1/calls/{call}/unhold": {
                "parameters": [_CALL_PARAM],
                "post": _call_operation("Take a leg (or both) off hold",
                                        {"$ref": "#/components/schemas/HoldRequest"}),
            },
            "/api/v1/calls/{call}/messages": {
                "parameters": [_CALL_PARAM],
                "get": {
                    "summary": "The call's captured SIP messages, oldest first (a ladder)",
                    "description": "Kept while the capture is on (`PUT /api/v1/capture`), "
                                   "for the last calls that carried traffic; a call that "
                                   "ended stays while its messages are kept.",
                    "responses": {
                        "200": {"description": "The messages", "content": {
                            "application/json": {"schema": {
                                "type": "object",
                                "required": ["call_id", "capturing", "messages"],
                                "properties": {
                                    "call_id": {"type": "string"},
                                    "capturing": {"type": "boolean"},
                                    "messages": {"type": "array", "items": {
                                        "$ref": "#/components/schemas/CapturedMessage"}}}}}}},
                        "401": _PROBLEM, "404": _PROBLEM,
                    },
                },
            },
            "/api/v1/capture": {
                "get": {
                    "summary": "Whether SIP messages are being captured for the ladders",
                    "responses": {"200": capture_answer, "401": _PROBLEM, "404": _PROBLEM},
                },
                "put": {
                    "summary": "Capture on (for a lease: renew it) or off",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"type": "object", "additionalProperties": False,
                                   "required": ["enabled"],
                                   "properties": {"enabled": {"type": "boolean"}}}}}},
                    "responses": {"200": capture_answer, "400": _PROBLEM, "401": _PROBLEM,
                                  "404": _PROBLEM, "422": _PROBLEM},
                },
            },
            "/api/v1/operations/{operation}": {"get": {
                "summary": "A tracked operation: pending, ok or fail, with its steps",
                "parameters": [{"name": "operation", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The operation", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Operation"}}}},
                    "401": _PROBLEM, "404": _PROBLEM,
                },
            }},
            "/api/v1/events": {"get": {
                "summary": "Server-Sent Events: every event, as it happens",
                "parameters": [
                    {"name": "event", "in": "query", "style": "form", "explode": False,
                     "schema": {"type": "array",
                                "items": {"type": "string", "enum": list(KNOWN_EVENTS)}}},
                    {"name": "call", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "`event:` the name, `data:` JSON with `event`, "
                                           "`at`, `operation` (the id, when it belongs to one)"
                                           " and `params`",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "401": _PROBLEM, "422": _PROBLEM,
                },
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Problem": {
                "description": "RFC 9457 problem details",
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}},
            }},
            "schemas": {
                "Call": call, "Leg": leg, "TransferLink": link, "Operation": operation,
                "Step": step, "Problem": problem, "TransferRequest": transfer_body,
                "HoldRequest": hold_body, "CapturedMessage": message, "Capture": capture,
            },
        },
    }
