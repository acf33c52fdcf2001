"""The dialog store's cost (`python -m bench.store`): proxy CPU per call with `[dialog] store
= "sqlite:PATH"` against memory only, and how long a restart takes, from `serve` starting to
`/readyz` answering 200, with N dialogs in the store.

CPU: SIPp calls at a fixed rate through `switchboard serve`, each call held `--hold-ms` (so
each confirmed dialog is written once and deleted once), the proxy's CPU seconds read from
/proc around the run and divided by the calls completed. Restart: a store filled with N
copies of one real confirmed dialog (each its own id and Call-ID), then `serve` started on
it. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.proc import cpu_seconds
from bench.sipp import SippProcess, stat_int, stats_of, uac_command, uas_command
from bench.systems import Switchboard
from tests.support.ports import free_port
from tests.support.sipp import sipp_binary


def write_config(directory: Path, store: Path | None) -> Path:
    path = directory / "switchboard.toml"
    text = "[log]\nlevel = \"warning\"\n"
    if store is not None:
        text += f'[dialog]\nstore = "sqlite:{store}"\n'
    path.write_text(text, encoding="utf-8")
    return path


def cpu_per_call(workdir: Path, store: Path | None, rate: int, seconds: int,
                 hold_ms: int) -> dict[str, Any]:
    binary = sipp_binary()
    assert binary is not None, "sipp not installed (apt-get install sip-tester)"
    workdir.mkdir(parents=True, exist_ok=True)
    sb = Switchboard(extra_args=["--config", str(write_config(workdir, store))])
    sb.start(workdir)
    uas_port, uac_port = free_port("udp"), free_port("udp")
    calls = rate * seconds
    uas = SippProcess("uas", uas_command(binary, port=uas_port,
                                         stat_file=str(workdir / "uas.csv")), workdir)
    time.sleep(0.5)
    try:
        pids = sb.pids()
        before = cpu_seconds(pids)
        uac = SippProcess("uac", uac_command(
            binary, uas=("127.0.0.1", uas_port), proxy=sb.address, local_port=uac_port,
            rate=rate, calls=calls, stat_file=str(workdir / "uac.csv"),
            timeout_s=seconds * 3 + 30, extra=["-d", str(hold_ms)]), workdir)
        uac.wait(seconds * 3 + 60)
        time.sleep(1.0)  # the last writes behind the hot path
        used = cpu_seconds(pids) - before
        stats = stats_of(workdir / "uac.csv")
        done = stat_int(stats, "SuccessfulCall(C)")
        failed = stat_int(stats, "FailedCall(C)")
        writes = sb.statistics("store:") if store is not None else {}
    finally:
        uas.stop()
        sb.stop()
    return {"store": "sqlite" if store else "memory", "rate": rate, "calls": done,
            "failed": failed, "cpu_s": round(used, 3),
            "cpu_ms_per_call": round(used * 1000 / max(done, 1), 4), "store_stats": writes}


def fill_store(path: Path, count: int) -> None:
    """`count` confirmed dialogs in a fresh store at `path`: one real snapshot, copied."""
    from switchboard.readout import pack
    from switchboard.store import SqliteStore, StoreBatch
    from tests.unit.kit.callops import Net, established

    net = Net()
    template = established(net).dialog.snapshot(net.now)
    store = SqliteStore(str(path))
    batch = StoreBatch()
    now = time.time()
    for i in range(count):
        snap = dict(template, id=f"0.{0x100000 + i:x}", call_id=f"bench-{i}@store")
        batch.put.append((snap, now, None))
    store.write(batch)
    store.close()
    assert pack  # the store packs each snapshot the way the runtime does


def restart_time(workdir: Path, count: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "dialogs.sqlite"
    fill_store(store, count)
    with sqlite3.connect(store) as db:
        stored = db.execute("SELECT count(*) FROM dialogs").fetchone()[0]
    port, mi_port = free_port("udp"), free_port("tcp")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "serve", "--listen", f"udp:127.0.0.1:{port}",
         "--mi-http", f"127.0.0.1:{mi_port}", "--config", str(write_config(workdir, store))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=Switchboard().environment())
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mi_port}/readyz",
                                            timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > 300:
                raise TimeoutError("not ready after 300 s")
            time.sleep(0.02)
        ready = time.monotonic() - started
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "statistics:get",
                           "params": [["store:restored_dialogs"]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{mi_port}/mi", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            restored = json.load(r)["result"]["store:restored_dialogs"]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"stored": stored, "restored": restored, "ready_s": round(ready, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--rate", type=int, default=300, help="calls/s (default 300)")
    parser.add_argument("--seconds", type=int, default=20, help="seconds of calls (20)")
    parser.add_argument("--hold-ms", type=int, default=1000, help="call length, ms (1000)")
    parser.add_argument("--restart", default="10000",
                        help="stored dialog counts for the restart time (10000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        base = Path(tmp)
        memory = cpu_per_call(base / "memory", None, args.rate, args.seconds, args.hold_ms)
        print(json.dumps(memory))
        sqlite = cpu_per_call(base / "sqlite", base / "sqlite" / "dialogs.sqlite", args.rate,
                              args.seconds, args.hold_ms)
        print(json.dumps(sqlite))
        extra = sqlite["cpu_ms_per_call"] / memory["cpu_ms_per_call"] - 1
        print(f"CPU per call with the SQLite store: {extra:+.1%} against memory only")
        for count in (int(c) for c in args.restart.split(",") if c):
            print(json.dumps({"restart": count,
                              **restart_time(base / f"restart-{count}", count)}))


if __name__ == "__main__":
    main()
