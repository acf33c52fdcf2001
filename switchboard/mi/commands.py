"""The MI commands, declared into `REGISTRY` one declaration each.

Names, aliases, recipes, results and errors follow OpenSIPS (core `mi_core.c`, the dialog,
statistics and event-interface commands) so its tools work against switchboard. Each handler
validates input, calls the `ControlApi` and shapes the answer; none of them knows the runtime
behind the API. New commands (`callops:transfer`, `callops:hold`, ...) are added here the same
way.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Any, Final

from switchboard import __version__
from switchboard.api import CommandError, made
from switchboard.events import KNOWN_EVENTS
from switchboard.events.sinks import parse_sink
from switchboard.mi.registry import CommandContext, Params, Registry
from switchboard.sip.operations import end_call, hold, transfer

REGISTRY: Final = Registry()

# OpenSIPS evi:subscribe default (evi/event_interface.h DEFAULT_EXPIRE).
DEFAULT_EXPIRE: Final = 3600

SERVER: Final = f"switchboard ({__version__} ({platform.machine()}/{sys.platform}))"


@REGISTRY.command(
    "which",
    recipes=((), ("command",)),
    help="lists all available MI commands, or the parameter recipes of one",
)
async def which(ctx: CommandContext, params: Params) -> list[Any]:
    if "command" not in params:
        return ctx.registry.names()
    command = ctx.registry.lookup(params.get_str("command"))
    if command is None:
        raise CommandError(404, "unknown MI command")
    return [list(recipe) for recipe in command.recipes]


@REGISTRY.command("version", help="prints the version string of the running switchboard")
async def version(ctx: CommandContext, params: Params) -> dict[str, str]:
    return {"Server": SERVER}


@REGISTRY.command("uptime", help="prints when switchboard started and for how long it runs")
async def uptime(ctx: CommandContext, params: Params) -> dict[str, str]:
    # OpenSIPS prints ctime() text and whole seconds.
    return {
        "Now": time.ctime(ctx.clock()),
        "Up since": time.ctime(ctx.api.started_at()),
        "Up time": f"{int(ctx.api.uptime_seconds())} [sec]",
    }


@REGISTRY.command(
    "kill",
    aliases=("core:shutdown",),
    help="drains switchboard (new INVITEs get 503, transactions in flight finish, the "
    "dialog store is written) and stops it",
)
async def kill(ctx: CommandContext, params: Params) -> str:
    # OpenSIPS's core `kill`: no arguments, no output; the answer goes out before the stop.
    request_shutdown = getattr(ctx.api, "request_shutdown", None)
    if not callable(request_shutdown):
        raise CommandError(500, "this runtime cannot be stopped from the MI")
    request_shutdown()
    return "OK"


@REGISTRY.command(
    "dialog:list",
    aliases=("dlg_list",),
    # OpenSIPS also has [index, counter]; it would make the positional `dlg_list CALLID TAG`
    # ambiguous, so it is left out.
    recipes=((), ("callid",), ("callid", "from_tag")),
    help="lists the live dialogs, or the one with a Call-ID (and caller's From tag)",
)
async def dialog_list(ctx: CommandContext, params: Params) -> dict[str, Any]:
    if "callid" in params:
        callid = params.get_str("callid")
        from_tag = params.get_opt_str("from_tag")
        found = await ctx.api.list_dialogs(callid=callid, from_tag=from_tag)
        if not found:
            raise CommandError.dialog_not_found()
        return {"Dialog": found[0]}
    return {"Dialogs": await ctx.api.list_dialogs()}


@REGISTRY.command(
    "dialog:end_dlg",
    aliases=("dlg_end_dlg",),
    recipes=(("dialog_id",), ("dialog_id", "extra_hdrs")),
    help="ends a dialog, given its dialog ID or Call-ID",
)
async def dialog_end(ctx: CommandContext, params: Params) -> str:
    dialog_id = params.get_str("dialog_id")
    extra_headers = params.get_opt_str("extra_hdrs")
    await ctx.api.operate(made(end_call, dialog_id, extra_headers))
    return "OK"


@REGISTRY.command(
    "statistics:get",
    aliases=("get_statistics",),
    recipes=(("statistics",),),
    help='prints statistics: "all", a whole "group:", or single "group:name" / "name"',
)
async def statistics_get(ctx: CommandContext, params: Params) -> dict[str, int]:
    wanted = params.get_str_list("statistics")
    available = await ctx.api.statistics()
    return select_statistics(available, wanted)


def select_statistics(available: dict[str, int], wanted: list[str]) -> dict[str, int]:
    """OpenSIPS `get_statistics` selection; 404 when nothing at all matched.

    `all` selects everything, `group:` a whole group, `group:name` or a bare `name` one
    statistic. Names match case-insensitively, as OpenSIPS matches them.
    """
    selected: dict[str, int] = {}
    found = False
    for item in wanted:
        key = item.lower()
        if key == "all":
            matches = list(available)
        elif len(key) > 1 and key.endswith(":"):
            matches = [k for k in available if k.lower().startswith(key)]
        elif ":" in key:
            matches = [k for k in available if k.lower() == key][:1]
        else:
            matches = [k for k in available if k.partition(":")[2].lower() == key][:1]
        for name in matches:
            selected[name] = available[name]
        found = found or bool(matches)
    if not found:
        raise CommandError(404, "Statistics Not Found")
    return selected


@REGISTRY.command(
    "evi:subscribe",
    aliases=("event_subscribe",),
    recipes=(("event", "socket"), ("event", "socket", "expire")),
    help="subscribes a udp:IP:PORT or tcp:IP:PORT socket or an http(s):// webhook URL to an "
    "event; expire 0 unsubscribes",
)
async def evi_subscribe(ctx: CommandContext, params: Params) -> str:
    event = params.get_str("event")
    socket = params.get_str("socket")
    expire = params.get_int("expire") if "expire" in params else DEFAULT_EXPIRE
    if not event:
        raise CommandError.invalid_params("Empty value for parameter 'event'")
    if event not in KNOWN_EVENTS:
        # OpenSIPS answers an unknown event with this code and message.
        raise CommandError(400, "Bad parameter value", f"Unknown event '{event}'")
    if expire < 0:
        raise CommandError.invalid_params("Negative expire value")
    try:
        address = parse_sink(socket)
    except ValueError as exc:
        raise CommandError.invalid_params(str(exc)) from None
    await ctx.api.subscribe_event(event, str(address), expire)
    return "OK"


# -- call operations (OpenSIPS callops; spec §2, §3, §7, §9) ---------------------------------


@REGISTRY.command(
    "callops:transfer",
    aliases=("call_transfer",),
    recipes=(
        ("callid", "leg", "destination"),
        ("callid", "leg", "transfer_callid", "transfer_leg"),
        ("callid", "leg", "transfer_callid", "transfer_leg", "destination"),
        ("callid", "leg", "transfer_callid", "transfer_fromtag", "transfer_totag",
         "transfer_destination"),
    ),
    help="REFERs a leg of a call: blind to a destination, or attended to a party of another call",
)
async def callops_transfer(ctx: CommandContext, params: Params) -> str:
    destination = params.get_opt_str("destination") or params.get_opt_str("transfer_destination")
    await ctx.api.operate(made(
        transfer, params.get_str("callid"), params.get_str("leg"), destination,
        params.get_opt_str("transfer_callid"), params.get_opt_str("transfer_leg"),
        params.get_opt_str("transfer_fromtag"), params.get_opt_str("transfer_totag")))
    return "Accepted"


_HOLD_RECIPES = (("callid",), ("callid", "leg"), ("callid", "leg", "headers"))


def _hold_args(params: Params) -> tuple[str, str | None, list[str] | str | None]:
    headers: list[str] | str | None = None
    if "headers" in params:
        raw = params.get_raw("headers")
        headers = params.get_str_list("headers") if isinstance(raw, list) else (
            params.get_str("headers"))
    return params.get_str("callid"), params.get_opt_str("leg"), headers


@REGISTRY.command("callops:hold", aliases=("call_hold",), recipes=_HOLD_RECIPES,
                  help="puts the caller, the callee or both legs of a call on hold")
async def callops_hold(ctx: CommandContext, params: Params) -> str:
    await ctx.api.operate(made(hold, *_hold_args(params), on=True))
    return "OK"


@REGISTRY.command("callops:unhold", aliases=("call_unhold",), recipes=_HOLD_RECIPES,
                  help="resumes legs of a call put on hold by callops:hold")
async def callops_unhold(ctx: CommandContext, params: Params) -> str:
    await ctx.api.operate(made(hold, *_hold_args(params), on=False))
    return "OK"
