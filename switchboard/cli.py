"""The `switchboard` command line: `serve` runs a node, `mi` calls a running node's MI,
`check-config` validates a configuration file.

Flags and behaviour are the contract of DESIGN.md §3. `serve` builds the `Config` (file, then
flags; the options that override a key are made from the configuration schema), runs the
local runtime under uvloop, logs one `ready` line and on SIGINT/SIGTERM (or the MI's
`kill`) drains the runtime when it can (new INVITEs refused, transactions in flight
finished; a second signal cuts it short) and stops cleanly. `mi`
follows `opensips-cli -x mi`: when every argument is `name=value` they are named params,
otherwise positional. The runtimes are imported only when `serve` runs, so `mi` starts fast
and without them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import click

from switchboard import __version__, allocator
from switchboard.config import (
    Config,
    ConfigError,
    apply_overrides,
    dump_config,
    load_config,
    serve_flags,
)
from switchboard.config.kinds import Choice, FilePath, Int, Kind
from switchboard.logs import setup_logging
from switchboard.script import ScriptError

log = logging.getLogger("switchboard")

DEFAULT_MI_URL: Final = "http://127.0.0.1:8888/mi"

WEBHOOK_SECRET_MISSING: Final = (
    "events.webhook_secret: webhooks are configured, and every webhook request is signed: "
    "set a secret")

# opensips-cli's test for a named argument (opensipscli/modules/mi.py get_params_set).
_NAMED_ARG = re.compile(r"([a-zA-Z._-]+)=")

# Commands whose parameter is an array, as opensips-cli special-cases them
# (MI_ARRAY_PARAMS_COMMANDS): position of the array and its name.
ARRAY_PARAMS: Final[dict[str, tuple[int, str]]] = {
    "statistics:get": (0, "statistics"),
    "get_statistics": (0, "statistics"),
}


@click.group()
@click.version_option(__version__, prog_name="switchboard")
def main() -> None:
    """switchboard: a SIP call controller (transfer, hold, events) with an OpenSIPS-style MI."""


def _override_options(command: Callable[..., None]) -> Callable[..., None]:
    """`serve`'s options that override a key, as the configuration schema declares them."""
    for override in reversed(serve_flags()):
        flag = override.flag
        command = click.option(flag.name, flag.param, help=flag.help, metavar=flag.metavar,
                               **_click_type(override.setting.kind))(command)
    return command


def _click_type(kind: Kind[Any]) -> dict[str, Any]:
    # click checks what it can before the configuration is read, and lists the choices.
    if kind.repeated:
        return {"multiple": True}
    if isinstance(kind, Choice):
        return {"type": click.Choice(kind.choices, case_sensitive=not kind.fold_case)}
    if isinstance(kind, Int):
        return {"type": click.IntRange(min=kind.minimum, max=kind.maximum)}
    if isinstance(kind, FilePath):
        return {"type": click.Path(exists=True, dir_okay=False)}
    return {}


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML configuration file.",
)
@_override_options
def serve(config_path: str | None, **flags: Any) -> None:
    """Run a switchboard node until SIGINT or SIGTERM."""
    env_level = os.environ.get("SWITCHBOARD_LOG_LEVEL")
    try:
        config = load_config(config_path)
        if env_level and flags["log_level"] is None:
            try:
                config = apply_overrides(config, log_level=env_level)
            except ConfigError as exc:
                raise ConfigError("SWITCHBOARD_LOG_LEVEL", exc.problem) from None
        config = apply_overrides(config, **flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if config.events.missing_secret():
        raise click.UsageError(WEBHOOK_SECRET_MISSING)
    if config.runtime.allocator != "python":
        if config.runtime.kind != "local":
            raise click.UsageError("[runtime] allocator applies to the local runtime only")
        try:
            allocator.run_on(config.runtime.allocator)  # may start this command again
        except allocator.AllocatorMissing as exc:
            raise click.UsageError(str(exc)) from None
    setup_logging(config.log.format, config.log.level)
    if config.runtime.allocator != "python":
        running = allocator.active()
        if running != config.runtime.allocator:
            log.warning("memory allocator: %s asked for, %s running (LD_PRELOAD did not load it)",
                        config.runtime.allocator, running)
    import uvloop

    try:
        uvloop.run(_serve(config))
    except (OSError, ScriptError) as exc:
        # A socket that cannot be bound (address in use, no such address) or a script that
        # does not load is an operator error, not a crash: say so in one line.
        log.error("switchboard cannot start: %s", _describe(exc))
        sys.exit(1)


def _describe(exc: BaseException) -> str:
    # The cause often holds the useful part ("[Errno 98] Address already in use").
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        text = str(current)
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


def _runtime(config: Config) -> Callable[[Config], Awaitable[Any]]:
    if config.runtime.kind == "local":
        from switchboard.cluster.local import serve as serve_local

        return serve_local
    # Only the ray runtime imports ray; it is optional and may not be installed. Its module
    # is `ray_runtime`, not `ray`, so that nothing can mistake it for the library.
    try:
        module = importlib.import_module(f"switchboard.cluster.{config.runtime.kind}_runtime")
    except ImportError as exc:
        raise click.UsageError(
            f"--runtime {config.runtime.kind} is not available here: {exc}"
        ) from None
    serve_runtime: Callable[[Config], Awaitable[Any]] = module.serve
    return serve_runtime


async def _serve(config: Config) -> None:
    serve_runtime = _runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before starting, so a signal during start-up stops cleanly too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        sb = await serve_runtime(config)
        try:
            # Prefer what the runtime actually bound (port 0 in the config picks a free port).
            listeners = getattr(sb, "listeners", None) or config.listen.sockets
            sockets = " ".join(str(s) for s in listeners)
            mi = getattr(getattr(sb, "mi", None), "url", None)
            if mi is None:
                mi = f"http://{config.mi.http}/mi" if config.mi.http is not None else "off"
            capture = f", HEP to udp:{config.hep.collector}" if config.hep.collector else ""
            log.info(
                "switchboard %s ready: listening on %s, MI %s%s", __version__, sockets, mi,
                capture, extra={"event": "ready"},
            )
            await _stop_asked(stop, getattr(sb, "shutdown_requested", None))
            log.info("switchboard stopping", extra={"event": "stopping"})
            drain = getattr(sb, "drain", None)
            if drain is not None:
                # A second signal while draining stops at once.
                stop.clear()
                draining = asyncio.ensure_future(drain())
                signalled = asyncio.ensure_future(stop.wait())
                await asyncio.wait({draining, signalled}, return_when=asyncio.FIRST_COMPLETED)
                for task in (draining, signalled):
                    task.cancel()
        finally:
            await sb.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _stop_asked(signalled: asyncio.Event, requested: asyncio.Event | None) -> None:
    """Until a signal came, or the runtime was asked to stop (MI `kill`)."""
    if requested is None:
        await signalled.wait()
        return
    waits = {asyncio.ensure_future(signalled.wait()), asyncio.ensure_future(requested.wait())}
    _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def build_params(command: str, args: Sequence[str], *, as_json: bool = False) -> Any:
    """Arguments to JSON-RPC params, by the opensips-cli rule.

    All `name=value` → an object; otherwise a positional array. With `as_json` each value
    that parses as JSON is sent as that JSON value. For commands taking an array
    (`statistics:get`) the array is built from the remaining positional arguments, or by
    splitting a named value on whitespace, as opensips-cli does.
    """
    if not args:
        return None
    array = ARRAY_PARAMS.get(command)
    if all(_NAMED_ARG.match(arg) for arg in args):
        named: dict[str, Any] = {}
        for arg in args:
            name, _, value = arg.partition("=")
            if array is not None and name == array[1] and not (as_json and _is_json_array(value)):
                named[name] = value.split()
            else:
                named[name] = _value(value, as_json)
        return named
    positional: list[Any] = [_value(arg, as_json) for arg in args]
    if array is not None:
        rest = positional[array[0] :]
        # A single JSON array given with -j already is the array.
        if rest and not (len(rest) == 1 and isinstance(rest[0], list)):
            positional = [*positional[: array[0]], rest]
    return positional


def _value(text: str, as_json: bool) -> Any:
    if not as_json:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_json_array(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--url",
    default=DEFAULT_MI_URL,
    show_default=True,
    envvar="SWITCHBOARD_MI_URL",
    help="MI endpoint.",
)
@click.option("--token", envvar="SWITCHBOARD_MI_TOKEN", help="Bearer token for the MI.")
@click.option(
    "-j",
    "--json",
    "as_json",
    is_flag=True,
    help="Send values that parse as JSON as JSON (numbers, arrays, objects).",
)
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mi(url: str, token: str | None, as_json: bool, command: str, args: tuple[str, ...]) -> None:
    """Call an MI COMMAND with name=value or positional ARGS and print the result."""
    from switchboard.mi.client import MIClientError, MIConnectionError, call

    params = build_params(command, args, as_json=as_json)
    try:
        result = call(url, command, params, token=token)
    except MIClientError as exc:
        click.echo(json.dumps(exc.to_json(), indent=4), err=True)
        sys.exit(1)
    except MIConnectionError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(result, indent=4))


@main.command("check-config")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--print", "show", is_flag=True, help="Print the effective configuration, defaults included."
)
def check_config(path: str, show: bool) -> None:
    """Check the TOML configuration FILE: exit 0 when switchboard would accept it.

    Errors name the key and the line (`FILE:LINE: key: problem`) and exit 1.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if config.events.missing_secret():
        click.echo(f"error: {path}: {WEBHOOK_SECRET_MISSING}", err=True)
        sys.exit(1)
    if config.script.path and not os.path.isfile(config.script.path):
        click.echo(f"error: {path}: script.path: no such file {config.script.path!r}", err=True)
        sys.exit(1)
    if show:
        click.echo(dump_config(config), nl=False)
    else:
        click.echo(f"{path}: ok")
