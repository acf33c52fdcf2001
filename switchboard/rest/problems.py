"""RFC 9457 problem details: how the REST API says no.

`Problem` is the exception a route raises; `problem_for` is the one table from the core's
`Refused` (what `sip.operations` and callops answer with, the same numbers as the MI's module
errors) to an HTTP status and a problem type. Knows nothing of routes or of the core's checks.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from switchboard.readout import json_bytes
from switchboard.sip.operations import (
    BAD_INPUT,
    BAD_LEG,
    NOT_FOUND,
    NOT_READY,
    NOT_SENT,
    NOTHING_TO_DO,
    PENDING,
    Refused,
)

CONTENT_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:switchboard:problem:"


class Problem(Exception):
    """An answer with problem details: `status`, a short `kind` (the type's last part),
    `title`; `detail` for this occurrence, `field` the input at fault, `sip_status` the
    core's status when the core refused."""

    def __init__(self, status: int, kind: str, title: str, detail: str | None = None, *,
                 field: str | None = None, sip_status: int | None = None) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.field = field
        self.sip_status = sip_status

    @classmethod
    def invalid(cls, field: str, why: str) -> Problem:
        """422: the input `field` is wrong."""
        return cls(422, "invalid-input", "Invalid input", f"{field}: {why}", field=field)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": TYPE_PREFIX + self.kind, "title": self.title,
                               "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance is not None:
            doc["instance"] = instance
        if self.field is not None:
            doc["field"] = self.field
        if self.sip_status is not None:
            doc["sip_status"] = self.sip_status
        return doc

    def response(self, instance: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=self.status, body=encode(self.body(instance)),
                            headers={"Content-Type": CONTENT_TYPE, **(headers or {})})


def encode(doc: object) -> bytes:
    return json_bytes(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))


# The core's refusals as HTTP answers: (status, problem kind, title). A missing call is 404;
# a call that cannot take the operation now (not answered yet, an operation of the same kind
# still pending: the SIP 491) is a conflict; input the core will not use is 422.
_REFUSED: Final[dict[int, tuple[int, str, str]]] = {
    BAD_INPUT: (422, "invalid-input", "Invalid input"),
    BAD_LEG: (422, "invalid-input", "Invalid input"),
    NOT_FOUND: (404, "no-such-call", "No such call"),
    NOT_READY: (409, "call-not-ready", "Call not answered yet"),
    NOTHING_TO_DO: (409, "nothing-to-change", "Nothing to change"),
    PENDING: (409, "operation-pending", "An operation on this call is still pending"),
    NOT_SENT: (502, "not-sent", "The request could not be sent"),
}


def problem_for(refused: Refused) -> Problem:
    """The problem details of a refusal; an unknown status keeps its class (4xx as 409,
    anything else as 502: the call's parties, not the client, are at fault)."""
    status, kind, title = _REFUSED.get(
        refused.status,
        (409, "refused", refused.reason) if 400 <= refused.status < 500
        else (502, "refused", refused.reason))
    field = refused.field
    if refused.status == BAD_LEG and field is None:
        field = "leg"
    detail = refused.detail or (refused.reason if kind == "refused" or status == 404 else None)
    if refused.status == BAD_LEG and detail is None:
        detail = "leg: must be caller, callee or both"
    return Problem(status, kind, title, detail, field=field, sip_status=refused.status)
