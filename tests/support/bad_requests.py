"""One table of bad call-operation requests and what each runtime must answer: the local and
the ray runtime refuse the same input the same way, because both take the operation value
`switchboard.sip.operations` makes (and checks) once. No live call is needed: each request is
refused for its input, or for naming a call that does not exist. Every row fits an MI recipe
(OpenSIPS' parameter sets) and is also a Python API call (`python_kwargs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (MI method, params, JSON-RPC code, message, what `data` starts with or None)
BadRequest = tuple[str, dict[str, Any], int, str, str | None]

_CALL = "nothing@here"
_DEST = "sip:carol@127.0.0.1"

BAD_REQUESTS: list[BadRequest] = [
    ("callops:transfer", {"callid": _CALL, "leg": "both", "destination": _DEST},
     -32602, "Invalid params", "leg:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller",
                          "destination": "sip:carol@127.0.0.1\r\nVia: SIP/2.0/UDP evil"},
     -32602, "Invalid params", "destination:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "destination": "tel:+15551234"},
     -32602, "Invalid params", "destination:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "transfer_callid": "other@x",
                          "transfer_leg": "both"},
     -32602, "Invalid params", "transfer_leg:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "transfer_callid": "other@x",
                          "transfer_fromtag": "", "transfer_totag": "t",
                          "transfer_destination": _DEST},
     -32602, "Invalid params", "transfer_destination:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "transfer_callid": "other@x",
                          "transfer_fromtag": "f\r\nX: y", "transfer_totag": "t",
                          "transfer_destination": _DEST},
     -32602, "Invalid params", "transfer_fromtag:"),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "destination": _DEST},
     404, "Dialog not found", None),
    ("callops:transfer", {"callid": _CALL, "leg": "caller", "transfer_callid": "other@x",
                          "transfer_leg": "callee"},
     404, "Dialog not found", None),
    ("callops:hold", {"callid": _CALL, "leg": "middle"}, 420, "Bad leg", None),
    ("callops:hold", {"callid": _CALL, "leg": "both", "headers": "Via: SIP/2.0/UDP evil"},
     -32602, "Invalid params", "headers:"),
    ("callops:hold", {"callid": _CALL, "leg": "both", "headers": ["X-A: 1", "X-B: 2", "X-C: 3"]},
     -32602, "Invalid params", "headers:"),
    ("callops:hold", {"callid": _CALL}, 404, "Dialog not found", None),
    ("callops:unhold", {"callid": _CALL, "leg": "callee"}, 404, "Dialog not found", None),
    ("dialog:end_dlg", {"dialog_id": _CALL, "extra_hdrs": "not a header"},
     -32602, "Invalid params", "extra_hdrs:"),
    ("dialog:end_dlg", {"dialog_id": _CALL}, 404, "Dialog not found", None),
]

# The Python API method of each MI command, and its parameter names where they differ.
PYTHON_API: dict[str, str] = {
    "callops:transfer": "call_transfer", "callops:hold": "call_hold",
    "callops:unhold": "call_unhold", "dialog:end_dlg": "end_dialog",
}
PYTHON_NAMES: dict[str, str] = {"extra_hdrs": "extra_headers",
                                "transfer_destination": "destination"}


def python_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {PYTHON_NAMES.get(name, name): value for name, value in params.items()}


def check_refusals(answer: Callable[[str, dict[str, Any]], tuple[int, str, Any]]) -> None:
    """`answer(method, params)` gives (code, message, data) of the refusal; every row of the
    table must get its own."""
    wrong = []
    for method, params, code, message, data_prefix in BAD_REQUESTS:
        got = answer(method, params)
        if got[:2] != (code, message) or (
                data_prefix is not None and not str(got[2]).startswith(data_prefix)):
            wrong.append((method, params, got))
    assert wrong == [], wrong
