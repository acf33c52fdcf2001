"""Listing many calls over REST (`python -m bench.rest`): `GET /api/v1/calls` paged through N
held dialogs, and how long SIP waits meanwhile.

A dialog store is filled with N copies of one real confirmed dialog (each its own id and
Call-ID, `bench.store.fill_store`) and `switchboard serve` (the `local` runtime) restores them
at start: N held dialogs without N calls. Then, while a SIP OPTIONS ping every 20 ms measures
how long the node takes to answer (`bench.dialogs.Pinger`, a thread of this process), every
page of `--limit` calls is asked for in turn, cursor after cursor, and timed. The first page
also makes the worker's index of its dialogs (`actors/listing.py`), so it is reported apart.
The same ping for a few seconds before any listing gives the machine's own delays (`idle_`).

`--server-path DIR` runs the server from another checkout (its PYTHONPATH), to compare.
The server's CPU seconds over the listing (/proc), per page, are what a loaded machine
does not blur. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.dialogs import Pinger
from bench.proc import cpu_seconds
from bench.store import fill_store, write_config
from tests.support.ports import free_port


def _get(url: str, timeout: float = 120.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


def _mi(mi_port: int, method: str, params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{mi_port}/mi", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)["result"]


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run(workdir: Path, dialogs: int, limit: int, server_path: str | None,
        idle_s: float = 5.0, max_pages: int | None = None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "dialogs.sqlite"
    store.unlink(missing_ok=True)
    fill_store(store, dialogs)
    port, mi_port = free_port("udp"), free_port("tcp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [server_path or str(Path.cwd()),
                                                      env.get("PYTHONPATH")]))
    server = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "serve", "--listen", f"udp:127.0.0.1:{port}",
         "--mi-http", f"127.0.0.1:{mi_port}", "--config", str(write_config(workdir, store))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=server_path)
    base = f"http://127.0.0.1:{mi_port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("not ready after 300 s")
            time.sleep(0.05)
        held = _mi(mi_port, "statistics:get", [["dialog:active_dialogs"]])
        build = subprocess.run(
            [sys.executable, "-c", "import switchboard; print(switchboard.BUILD)"],
            env=env, capture_output=True, text=True, check=False, cwd=server_path
        ).stdout.strip()
        # SIP alone first: what the machine gives without any listing.
        idle = Pinger(("127.0.0.1", port))
        idle.start()
        time.sleep(idle_s)
        idle.finish()
        pinger = Pinger(("127.0.0.1", port))
        pinger.start()
        time.sleep(0.5)
        times: list[float] = []
        listed, cursor = 0, None
        cpu_before = cpu_seconds([server.pid])
        started = time.perf_counter()
        while True:
            url = f"{base}/api/v1/calls?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            t0 = time.perf_counter()
            page = _get(url)
            times.append((time.perf_counter() - t0) * 1000)
            listed += len(page["calls"])
            cursor = page["next_cursor"]
            if cursor is None or len(times) == max_pages:
                break
        total = time.perf_counter() - started
        cpu = cpu_seconds([server.pid]) - cpu_before
        time.sleep(0.5)
        pinger.finish()
    finally:
        server.terminate()
        server.wait(30)
    rest = times[1:] or times
    return {
        "dialogs_held": held["dialog:active_dialogs"], "build": build, "limit": limit,
        "pages": len(times), "calls_listed": listed, "total_s": round(total, 2),
        "first_page_ms": round(times[0], 2),
        "page_ms_p50": _ms(rest, 0.5), "page_ms_p99": _ms(rest, 0.99),
        "page_ms_max": round(max(rest), 2), "page_ms_mean": round(statistics.mean(rest), 2),
        # The server's own CPU for the whole listing, per page: what the machine's other
        # load does not change.
        "server_cpu_ms_per_page": round(cpu * 1000 / len(times), 2),
        "sip_pings": len(pinger.rtts_ms),
        "sip_ping_ms_p50": _ms(pinger.rtts_ms, 0.5), "sip_ping_ms_p99": _ms(pinger.rtts_ms, 0.99),
        "sip_ping_ms_max": round(max(pinger.rtts_ms), 2),
        "idle_sip_ping_ms_p99": _ms(idle.rtts_ms, 0.99),
        "idle_sip_ping_ms_max": round(max(idle.rtts_ms), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rest", description=__doc__)
    parser.add_argument("--dialogs", type=int, default=100_000, help="held dialogs (100000)")
    parser.add_argument("--limit", type=int, default=100, help="calls a page (100)")
    parser.add_argument("--pages", type=int, help="stop after this many pages (all)")
    parser.add_argument("--server-path", help="run the server from this checkout")
    parser.add_argument("--workdir", type=Path, help="where the store goes (a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp:
        result = run(args.workdir or Path(tmp), args.dialogs, args.limit, args.server_path,
                     max_pages=args.pages)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
