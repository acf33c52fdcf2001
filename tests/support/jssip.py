"""A JsSIP phone (npm `jssip`, with the `ws` package as its WebSocket) run under node by
tests/interop/jssip/phone.js: started on a ws:// or wss:// URL with a SIP URI, it registers,
answers incoming calls or places one (`call`), and reports events as JSON lines, which
`wait_event` waits for. scripts/test installs node and the npm packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.output import tail

PHONE_DIR = Path(__file__).resolve().parents[1] / "interop" / "jssip"


def missing() -> str | None:
    """Why the phone cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node not installed (apt-get install nodejs npm, or run scripts/test)"
    if not (PHONE_DIR / "node_modules" / "jssip").is_dir():
        return f"npm packages missing: npm ci --prefix {PHONE_DIR} (scripts/test does)"
    return None


class JsSipPhone:
    def __init__(self, url: str, uri: str, *, log_dir: Path, name: str = "jssip",
                 ca_file: Path | None = None) -> None:
        env = dict(os.environ, DEBUG="JsSIP:*")
        if ca_file is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ["node", str(PHONE_DIR / "phone.js"), url, uri], cwd=PHONE_DIR, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"{name}-stdout")
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            self._queue.put(event)

    def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event called `name` (events before it are kept in `events`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {name!r} event in {timeout} s\n"
                                     f"{self.describe()}")
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            self.events.append(event)
            if event.get("event") == name:
                return event

    def wait_received(self, start: str, timeout: float = 10.0) -> str:
        """The next frame received whose text starts with `start` (`"ACK "`)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.wait_event("rx", max(0.0, deadline - time.monotonic()))
            data = str(event.get("data", ""))
            if data.startswith(start):
                return data

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    def describe(self, lines: int = 120) -> str:
        """The frames the phone sent and received (first lines), its other events, and the
        end of its JsSIP debug output."""
        while not self._queue.empty():
            self.events.append(self._queue.get_nowait())
        wire = []
        for event in self.events:
            if event.get("event") in ("rx", "tx"):
                wire.append(f"{event['event']} {str(event.get('data', '')).partition(chr(13))[0]}")
            else:
                wire.append(json.dumps(event)[:300])
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            text = ""
        return (f"{self.name} events:\n" + "\n".join(wire)
                + f"\n{self.name} stderr ({self.stderr_path}):\n{tail(text, lines)}")
