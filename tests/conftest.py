"""Shared fixtures: free ports, `switchboard serve` subprocesses, SIPp runs and an event
subscriber.

The machinery lives in tests/support/ (`tests.support.ports`, `.server`, `.sipp`, `.events`);
this file only turns it into fixtures and attaches the output of every server and SIPp run to
the report of a failed test.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ports
from tests.support.events import EventCollector, collecting
from tests.support.server import SwitchboardServer, start_switchboard
from tests.support.sipp import Sipp, sipp_binary

_servers_key = pytest.StashKey[list[SwitchboardServer]]()
_sipps_key = pytest.StashKey[list[Sipp]]()
_call_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_call_failed_key] = True
        for server in item.stash.get(_servers_key, []):
            report.sections.append((f"{server.name} output", server.describe()))
        for sipp in item.stash.get(_sipps_key, []):
            result = sipp.result if sipp.result is not None else sipp.snapshot()
            report.sections.append((f"sipp {sipp.name}", result.describe()))
    return report


@pytest.fixture
def free_port() -> Callable[..., int]:
    """`free_port(kind="udp")` -> a free 127.0.0.1 port; kind is "udp", "tcp" or "both"."""
    return ports.free_port


@pytest.fixture
def switchboard_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., SwitchboardServer]]:
    """Factory: `switchboard_server(*extra_args, name=..., udp=True, tcp=True, env=None)`.

    Starts `python -m switchboard serve --listen udp:127.0.0.1:P --listen tcp:127.0.0.1:P
    --mi-http 127.0.0.1:P2 *extra_args`, waits (15 s) for a `ready` line on stderr and returns
    a SwitchboardServer (`.udp_port`, `.tcp_port`, `.mi_url`, `.mi(method, **params)`,
    `.mi_result(...)`, `.output`, `.wait_for_output(regex)`). Stopped with SIGTERM (SIGKILL
    after 5 s) at teardown; its output is attached to the report when the test fails.
    """
    servers = request.node.stash.setdefault(_servers_key, [])

    def start(*extra_args: str, name: str | None = None, **kwargs: Any) -> SwitchboardServer:
        label = name or ("switchboard" if not servers else f"switchboard-{len(servers) + 1}")
        server = start_switchboard(*extra_args, log_dir=tmp_path, name=label, **kwargs)
        servers.append(server)
        return server

    yield start

    hung = []
    for server in servers:
        server.stop(timeout=5.0)
        if server.killed:
            hung.append(server)
    if hung and not request.node.stash.get(_call_failed_key, False):
        pytest.fail(
            "switchboard did not stop within 5 s of SIGTERM:\n"
            + "\n\n".join(s.describe() for s in hung),
            pytrace=False,
        )


@pytest.fixture
def switchboard(switchboard_server: Callable[..., SwitchboardServer]) -> SwitchboardServer:
    """One `switchboard serve` with default options (UDP and TCP on one port, MI on another)."""
    return switchboard_server()


@pytest.fixture
def sipp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    """Factory: `sipp(name, scenario, local_port=..., remote=None, transport="udp", calls=1,
    rate=None, keys=None, timeout=60, trace_msg=True, extra_args=())` -> a started Sipp.

    Needs the SIPp binary: a failure when it is missing (scripts/test
    installs it). Logs go to the test's tmp_path; every run still alive at teardown is killed,
    and their logs are attached to the report when the test fails.
    """
    if sipp_binary() is None:
        message = "sipp not installed (apt-get install sip-tester, or run scripts/test)"
        pytest.fail(message, pytrace=False)  # never a silent skip: scripts/test installs it
    runs = request.node.stash.setdefault(_sipps_key, [])

    def start(name: str, scenario: str | Path, **kwargs: Any) -> Sipp:
        kwargs.setdefault("log_dir", tmp_path)
        run = Sipp(name, scenario, **kwargs)
        runs.append(run)
        return run.start()

    yield start

    for run in runs:
        run.kill()


@pytest.fixture
def events() -> Iterator[EventCollector]:
    """A datagram event subscriber on 127.0.0.1 for one test (`--event-datagram
    events.socket`); what it received is printed at teardown, shown when the test failed."""
    with collecting() as collector:
        yield collector
