"""SIPp for tests and the bench: finding the binary, running a scenario, reading its results.

`Sipp` runs one scenario (tests/interop/scenarios by default) in the foreground with its logs
(errors, statistics CSV, final screen, message trace) in a directory; `SippResult` is what a run
left behind, with its statistics read from the `-trace_stat` CSV; `assert_clean` fails a test
whose runs were not all clean. `sip_messages` and `received` read the messages of a run's
`-trace_msg` log (`SipMessage`). `killed_on_failure`, `wait_caller_first` and `wait_clean`
end a test's runs together: none waits out its timeout for calls that will never come. All traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.output import read_text, tail
from tests.support.ports import HOST, free_port, wait_listening

SCENARIOS = Path(__file__).resolve().parents[1] / "interop" / "scenarios"

SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1"}


def sipp_binary() -> str | None:
    """Path of the SIPp binary (Debian package sip-tester), or None."""
    return os.environ.get("SIPP") or shutil.which("sipp")


@dataclass
class SippResult:
    """What one SIPp run left behind: exit code, final statistics and log files."""

    name: str
    args: list[str]
    returncode: int | None
    stats: dict[str, str]
    files: dict[str, Path]

    def count(self, column: str) -> int:
        """A cumulative counter from the statistics CSV, e.g. count("SuccessfulCall")."""
        value = self.stats.get(column if column.endswith(")") else f"{column}(C)", "")
        try:
            return int(value)
        except ValueError:
            return -1

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    @property
    def unexpected(self) -> int:
        return self.count("FailedUnexpectedMessage")

    def problems(self, calls: int) -> list[str]:
        """Why this run is not `calls` clean successful calls (empty when it is)."""
        out = []
        if self.returncode != 0:
            out.append(f"exit code {self.returncode} (0 = all calls successful)")
        if not self.stats:
            out.append("no statistics written")
        else:
            if self.successful != calls:
                out.append(f"SuccessfulCall(C) = {self.successful}, expected {calls}")
            if self.failed != 0:
                out.append(f"FailedCall(C) = {self.failed}")
            if self.unexpected != 0:
                out.append(f"FailedUnexpectedMessage(C) = {self.unexpected}")
        return out

    def describe(self, lines: int = 60) -> str:
        interesting = (
            "SuccessfulCall(C)",
            "FailedCall(C)",
            "FailedUnexpectedMessage(C)",
            "FailedMaxUDPRetrans(C)",
            "FailedTimeoutOnRecv(C)",
            "FailedTcpConnect(C)",
            "FailedTcpClosed(C)",
            "OutOfCallMsgs(C)",
            "DeadCallMsgs(C)",
            "Retransmissions(C)",
        )
        stats = ", ".join(f"{k}={self.stats[k]}" for k in interesting if k in self.stats)
        parts = [
            f"=== sipp {self.name}: exit code {self.returncode}",
            f"command: {' '.join(self.args)}",
            f"stats: {stats or '(none)'}",
        ]
        for label in ("errors", "stderr", "screen", "messages"):
            path = self.files.get(label)
            if path is None:
                continue
            text = read_text(path).strip()
            if text:
                parts.append(f"--- {label} ({path}) ---\n{tail(text, lines)}")
        return "\n".join(parts)


def assert_clean(*results: SippResult, calls: int = 1, why: str = "") -> None:
    """Every run made `calls` successful calls and nothing else; the failure message says `why`
    that matters and carries each run's SIPp logs (conftest attaches switchboard's output)."""
    problems = [f"sipp {r.name}: {p}" for r in results for p in r.problems(calls)]
    assert not problems, ((f"{why}:\n" if why else "") + "\n".join(problems) + "\n\n"
                          + "\n\n".join(r.describe() for r in results))


def parse_stat_csv(text: str) -> dict[str, str]:
    """The last row of a SIPp statistics file as {column: value}; {} when there is no row."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    row = lines[-1].rstrip(";").split(";")
    return dict(zip(header, row, strict=False))


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp `-trace_stat` CSV (`;`-separated) keyed by column name."""
    return parse_stat_csv(read_text(path))


class Sipp:
    """One SIPp process running a scenario from tests/interop/scenarios in the foreground.

    `remote` is "host:port" for a UAC (SIPp sends every message there, so it is the proxy);
    a UAS scenario leaves it None. `keys` become `-key NAME VALUE` ([NAME] in the scenario).
    `timeout` (s) bounds the whole run (-timeout, an error when reached); `recv_timeout` (s)
    bounds each wait for an expected message. Logs (errors, statistics CSV, final screen,
    message trace, stdout/stderr) go to `log_dir`.
    """

    def __init__(
        self,
        name: str,
        scenario: str | Path,
        *,
        log_dir: Path,
        local_port: int,
        remote: str | None = None,
        transport: Literal["udp", "tcp"] = "udp",
        calls: int = 1,
        rate: float | None = None,
        keys: Mapping[str, object] | None = None,
        service: str = "uas",
        timeout: float = 60.0,
        recv_timeout: float = 10.0,
        trace_msg: bool = True,
        extra_args: Iterable[str] = (),
    ) -> None:
        binary = sipp_binary()
        if binary is None:
            raise FileNotFoundError(
                "sipp not found: apt-get install sip-tester (scripts/test does)"
            )
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIOS / path
        if not path.exists():
            raise FileNotFoundError(f"no SIPp scenario {path}")
        self.name = name
        self.local_port = local_port
        self.transport = transport
        self.calls = calls
        log_dir.mkdir(parents=True, exist_ok=True)
        self.files = {
            "errors": log_dir / f"sipp-{name}-errors.log",
            "stats": log_dir / f"sipp-{name}-stats.csv",
            "screen": log_dir / f"sipp-{name}-screen.log",
            "stdout": log_dir / f"sipp-{name}-stdout.log",
            "stderr": log_dir / f"sipp-{name}-stderr.log",
        }
        if trace_msg:
            self.files["messages"] = log_dir / f"sipp-{name}-messages.log"
        args = [binary]
        if remote is not None:
            args.append(remote)
        args += [
            "-sf",
            str(path),
            "-i",
            HOST,
            "-p",
            str(local_port),
            "-t",
            SIPP_TRANSPORTS[transport],
            "-s",
            service,
            "-m",
            str(calls),
            "-nostdin",
            # SIPp's remote-control socket (UDP, all interfaces, default 8888) turns any
            # datagram into key presses ("q" quits): keep it on a private port.
            "-cp",
            str(free_port("udp")),
            "-timeout",
            f"{int(timeout)}s",
            "-timeout_error",
            # A call whose next message does not come within this fails (FailedTimeoutOnRecv)
            # instead of holding the run until the global -timeout; recv timeout="..."
            # attributes in a scenario override it.
            "-recv_timeout",
            f"{int(recv_timeout * 1000)}",
            "-trace_err",
            "-error_file",
            str(self.files["errors"]),
            "-trace_stat",
            "-stf",
            str(self.files["stats"]),
            "-fd",
            "1",
            "-trace_screen",
            "-screen_file",
            str(self.files["screen"]),
        ]
        if trace_msg:
            args += ["-trace_msg", "-message_file", str(self.files["messages"])]
        if rate is not None:
            args += ["-r", f"{rate:g}", "-rp", "1000"]
        for key, value in (keys or {}).items():
            args += ["-key", key, str(value)]
        args += list(extra_args)
        self.args = args
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: SippResult | None = None

    def start(self) -> Sipp:
        with self.files["stdout"].open("wb") as out, self.files["stderr"].open("wb") as err:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.files["stats"].parent,
            )
        return self

    def wait_listening(self, timeout: float = 10.0) -> Sipp:
        """For a UAS: wait until SIPp has bound its port (and fail fast if it died)."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"sipp {self.name} exited early\n{self.finish().describe()}")
            try:
                wait_listening(self.local_port, self.transport, timeout=0.2)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"sipp {self.name} does not listen on {self.transport} "
                        f"port {self.local_port} after {timeout} s"
                    ) from None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit (killing it after `timeout`, default its own -timeout + 15 s)."""
        assert self.proc is not None, "start() first"
        try:
            self.proc.wait(self.timeout + 15 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.finish()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def snapshot(self) -> SippResult:
        """The run as it stands now (exit code None while it still runs)."""
        return SippResult(
            name=self.name,
            args=self.args,
            returncode=None if self.proc is None else self.proc.poll(),
            stats=read_sipp_stats(self.files["stats"]),
            files=self.files,
        )

    def finish(self) -> SippResult:
        """Record and return the result of a run that has exited."""
        assert self.proc is not None, "start() first"
        self.result = self.snapshot()
        return self.result


StartSipp = Callable[..., Sipp]
"""The `sipp` fixture: `sipp(name, scenario, **Sipp options)` -> a started run."""


@contextlib.contextmanager
def killed_on_failure(*runs: Sipp) -> Iterator[None]:
    """Kill every one of `runs` when the block fails (the failure then propagates)."""
    try:
        yield
    except BaseException:
        for run in runs:
            run.kill()
        raise


def wait_caller_first(caller: Sipp, *others: Sipp, grace: float = 5.0) -> list[SippResult]:
    """Wait for the caller, then for the others; once the caller has ended badly, each of them
    gets `grace` s instead of its whole timeout (the calls it waits for will never come)."""
    first = caller.wait()
    timeout = None if first.returncode == 0 else grace
    return [first, *(other.wait(timeout) for other in others)]


def wait_clean(caller: Sipp, *others: Sipp, calls: int = 1, grace: float = 5.0
               ) -> list[SippResult]:
    """`wait_caller_first`, then `assert_clean`: every run made `calls` clean calls."""
    results = wait_caller_first(caller, *others, grace=grace)
    assert_clean(*results, calls=calls)
    return results


# ----------------------------------------------------------------------------- the message trace


@dataclass(frozen=True)
class SipMessage:
    """One message from a SIPp `-trace_msg` log, as SIPp sent or received it."""

    direction: str  # "sent" or "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        first = self.first_line
        return None if first.startswith("SIP/2.0") else first.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        first = self.first_line
        return int(first.split(" ", 2)[1]) if first.startswith("SIP/2.0") else None

    @property
    def ruri(self) -> str:
        return self.first_line.split(" ")[1]

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> list[str]:
        head = self.text.split("\n\n", 1)[0]
        out = []
        for line in head.split("\n")[1:]:
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    @property
    def body(self) -> str:
        parts = self.text.split("\n\n", 1)
        return parts[1] if len(parts) > 1 else ""


_LOG_ENTRY = re.compile(
    r"^-{10,} [^\n]*\n\w+ message (sent|received)[^\n]*\n\n(.*?)(?=^-{10,} |\Z)",
    re.MULTILINE | re.DOTALL,
)


def sip_messages(result: SippResult) -> list[SipMessage]:
    """Every message in a run's `-trace_msg` log, in order."""
    path = result.files.get("messages")
    text = path.read_text(errors="replace") if path is not None and path.exists() else ""
    text = text.replace("\r\n", "\n")
    return [
        SipMessage(m.group(1), m.group(2).strip("\n") + "\n") for m in _LOG_ENTRY.finditer(text)
    ]


def received(result: SippResult, method: str) -> list[SipMessage]:
    """Distinct requests `method` the agent received (UDP retransmissions folded)."""
    seen: set[tuple[str | None, str | None]] = set()
    out = []
    for msg in sip_messages(result):
        if msg.direction == "received" and msg.method == method:
            key = (msg.header("Via"), msg.header("CSeq"))
            if key not in seen:
                seen.add(key)
                out.append(msg)
    return out
