"""The routing-script API: what a `--script FILE` module is given and may do.

A script is a Python module with a function `on_request(req)`, called for every new request
(not for retransmissions, ACKs or CANCELs). `req` is a `RequestContext`:

    def on_request(req):
        if req.method == "MESSAGE":
            req.reply(405)                       # answer and stop
        elif req.is_initial and req.method == "INVITE":
            req.call_blind_replace(old_callid)   # manual mode: link a transfer's new call
        # returning without a decision relays the request (the plain proxy)

Decisions: `req.reply(status[, reason])`, `req.drop()`, nothing (relay). Call operations, as
the OpenSIPS callops script functions: `req.call_transfer(leg, destination)`,
`req.call_blind_replace(callid[, leg])`, `req.call_transfer_notify()`. The request itself is
`req.request` (a `switchboard.sip.Request`), its source `req.source`.

A script that raises is not allowed to take the proxy down: the request is answered
500 and the error is logged. Without a script, switchboard is the plain proxy.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from .sip.routing import RequestContext as RequestContext
from .sip.routing import install_script as install_script

log = logging.getLogger(__name__)

Hook = Callable[[RequestContext], None]


class ScriptError(Exception):
    """The script file cannot be loaded or has no `on_request`."""


def load_script(path: str | Path) -> Hook:
    """Import the script at `path` and return its hook, wrapped so it cannot crash routing."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"switchboard_script_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ScriptError(f"{path}: {type(exc).__name__}: {exc}") from exc
    hook = getattr(module, "on_request", None)
    if not callable(hook):
        raise ScriptError(f"{path}: defines no on_request(req) function")

    def safe_hook(req: RequestContext) -> None:
        try:
            hook(req)
        except Exception:
            log.exception("routing script failed on %s %s", req.method, req.call_id)
            if req.action == "relay" and req.method != "ACK":
                req.reply(500, "Script Error")

    return safe_hook
