"""The dialog store's cost and its failures (`python -m bench.store`): proxy CPU per call with
`[dialog] store = "sqlite:PATH"` and `"redis://..."` against memory only, how long a restart
takes, from `serve` starting to `/readyz` answering 200, with N dialogs in the store, and
what a Redis outage under load costs.

CPU: SIPp calls at a fixed rate through `switchboard serve`, each call held `--hold-ms` (so
each confirmed dialog is written once and deleted once), the proxy's CPU seconds read from
/proc around the run and divided by the calls completed. Restart: a store filled with N
copies of one real confirmed dialog (each its own id and Call-ID), then `serve` started on
it. The Redis stores are a `redis-server` of the bench's own (no persistence), on loopback.

Outage (`--redis-outage SECONDS`): `serve` on a Redis store; long calls set up first (held
across everything that follows), then SIPp calls at `--outage-rate` in three phases of
SECONDS each: before, during (redis-server SIGKILLed, then started again empty; or
SIGSTOPped, then SIGCONTed: a hung Redis) and after. Reported per phase: calls attempted,
completed, failed and the INVITE-to-200 times; the time until the node says the store is
gone (`store:available` 0) and back (1); then, with only the long calls left, whether the
dialogs Redis holds are exactly the confirmed ones `dialog:list` shows, and after a SIGKILL
and restart of `serve` on the same store, whether they all come back and end with their
BYEs. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.proc import cpu_seconds
from bench.sipp import (
    UAC_LONG_SCENARIO,
    SippProcess,
    percentile,
    read_rtts,
    stat_int,
    stats_of,
    uac_command,
    uas_command,
)
from bench.systems import Switchboard
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sipp import sipp_binary

CONFIRMED = 4  # the dialog state `dialog:list` shows once the ACK came


def write_config(directory: Path, store: str | None) -> Path:
    """A `serve` configuration with the store URL `store` (none: memory only)."""
    path = directory / "switchboard.toml"
    text = "[log]\nlevel = \"warning\"\n"
    if store is not None:
        text += f'[dialog]\nstore = "{store}"\n'
    path.write_text(text, encoding="utf-8")
    return path


def store_kind(url: str | None) -> str:
    return "memory" if url is None else url.partition(":")[0]


def held_limit(rate: int, hold_ms: int) -> int:
    """SIPp's limit on calls at once: every call of `hold_ms` at `rate`, with room."""
    return max(1000, 2 * rate * (hold_ms // 1000 + 1))


def cpu_per_call(workdir: Path, store: str | None, rate: int, seconds: int,
                 hold_ms: int, server_pid: int | None = None) -> dict[str, Any]:
    """The proxy's CPU per call; with `server_pid` (redis-server's), the store server's
    too, reported apart."""
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
        server_before = cpu_seconds([server_pid]) if server_pid is not None else 0.0
        uac = SippProcess("uac", uac_command(
            binary, uas=("127.0.0.1", uas_port), proxy=sb.address, local_port=uac_port,
            rate=rate, calls=calls, stat_file=str(workdir / "uac.csv"),
            scenario=UAC_LONG_SCENARIO, limit=held_limit(rate, hold_ms),
            timeout_s=seconds * 3 + 30, extra=["-d", str(hold_ms)]), workdir)
        uac.wait(seconds * 3 + 60)
        time.sleep(1.0)  # the last writes behind the hot path
        used = cpu_seconds(pids) - before
        server_used = (cpu_seconds([server_pid]) - server_before
                       if server_pid is not None else 0.0)
        stats = stats_of(workdir / "uac.csv")
        done = stat_int(stats, "SuccessfulCall(C)")
        failed = stat_int(stats, "FailedCall(C)")
        writes = sb.statistics("store:") if store is not None else {}
    finally:
        uas.stop()
        sb.stop()
    out: dict[str, Any] = {
        "store": store_kind(store), "rate": rate, "calls": done, "failed": failed,
        "cpu_s": round(used, 3), "cpu_ms_per_call": round(used * 1000 / max(done, 1), 4),
        "store_stats": writes}
    if server_pid is not None:
        out["store_server_cpu_ms_per_call"] = round(server_used * 1000 / max(done, 1), 4)
    return out


def fill_store(url: str, count: int) -> None:
    """`count` confirmed dialogs in a fresh store at `url`: one real snapshot, copied."""
    from switchboard.store import StoreBatch, open_store
    from tests.unit.kit.callops import Net, established

    net = Net()
    template = established(net).dialog.snapshot(net.now)
    store = open_store(url)
    store.clear()
    now = time.time()
    for start in range(0, count, 10_000):
        batch = StoreBatch()
        for i in range(start, min(count, start + 10_000)):
            snap = dict(template, id=f"0.{0x100000 + i:x}", call_id=f"bench-{i}@store")
            batch.put.append((snap, now, None))
        store.write(batch)
    store.close()


def stored_count(url: str) -> int:
    from switchboard.store import open_store

    store = open_store(url)
    try:
        return len(store.load())
    finally:
        store.close()


def restart_time(workdir: Path, url: str, count: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    fill_store(url, count)
    stored = stored_count(url)
    port, mi_port = free_port("udp"), free_port("tcp")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "serve", "--listen", f"udp:127.0.0.1:{port}",
         "--mi-http", f"127.0.0.1:{mi_port}", "--config", str(write_config(workdir, url))],
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
        proc.wait(60)
    return {"store": store_kind(url), "stored": stored, "restored": restored,
            "ready_s": round(ready, 2)}


# -- a Redis outage under load -------------------------------------------------------------


class SamePort(Switchboard):
    """`serve` on a given UDP port: a restart where the calls' routes point."""

    def __init__(self, port: int, extra_args: list[str]) -> None:
        super().__init__(extra_args=extra_args)
        self.fixed_port = port

    def pick_port(self) -> int:
        return self.fixed_port


def confirmed_ids(sb: Switchboard) -> set[str]:
    return {str(d["ID"]) for d in sb.mi("dialog:list")["Dialogs"]
            if d.get("state") == CONFIRMED}


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               poll: float = 0.05) -> float:
    """Seconds until `check()`; raises TimeoutError after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not {what} after {timeout} s")
        time.sleep(poll)
    return time.monotonic() - started


def ready(sb: Switchboard) -> bool:
    """`/readyz` answers 200 (the MI server starts after the SIP sockets answer)."""
    try:
        with urllib.request.urlopen(sb.mi_url.removesuffix("/mi") + "/readyz",
                                    timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def available(sb: Switchboard) -> int:
    return int(sb.statistics("store:available")["store:available"])


def redis_ids(redis: RedisServer) -> tuple[set[str], int]:
    """The dialog ids Redis lists and how many dialog hashes it holds."""
    client = redis.client()
    try:
        ids = {i.decode() for i in client.smembers("switchboard:dialogs")}
        keys = sum(1 for _ in client.scan_iter(match="switchboard:dialog:*", count=1000))
    finally:
        client.close()
    return ids, keys


def phase(binary: str, workdir: Path, sb: Switchboard, uas_port: int, rate: int,
          seconds: int, hold_ms: int) -> SippProcess:
    """SIPp calls at `rate` for `seconds`, in `workdir` (its stats and rtt files)."""
    calls = rate * seconds
    return SippProcess("uac", uac_command(
        binary, uas=("127.0.0.1", uas_port), proxy=sb.address, local_port=free_port("udp"),
        rate=rate, calls=calls, stat_file=str(workdir / "uac.csv"),
        scenario=UAC_LONG_SCENARIO, limit=held_limit(rate, hold_ms),
        timeout_s=seconds * 3 + 60, extra=["-d", str(hold_ms)]), workdir)


def phase_result(uac: SippProcess, seconds: int) -> dict[str, Any]:
    uac.wait(seconds * 3 + 90)
    stats = stats_of(uac.workdir / "uac.csv")
    rtts = read_rtts(uac.workdir)
    return {"attempted": stat_int(stats, "OutgoingCall(C)"),
            "completed": stat_int(stats, "SuccessfulCall(C)"),
            "failed": stat_int(stats, "FailedCall(C)"),
            "invite_ms_p50": percentile(rtts, 50), "invite_ms_p99": percentile(rtts, 99),
            "invite_ms_max": max(rtts) if rtts else None}


def redis_outage(workdir: Path, how: str, seconds: int, rate: int, hold_ms: int,
                 long_calls: int) -> dict[str, Any]:
    """One outage: `how` is "kill" (SIGKILL, then a new empty redis-server on the same port)
    or "stop" (SIGSTOP, then SIGCONT)."""
    binary = sipp_binary()
    assert binary is not None, "sipp not installed (apt-get install sip-tester)"
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(workdir / "redis")
    config = ["--config", str(write_config(workdir, redis.url))]
    sb: Switchboard = Switchboard(extra_args=config)
    uas_port = free_port("udp")
    uas = SippProcess("uas", uas_command(binary, port=uas_port,
                                         stat_file=str(workdir / "uas.csv")), workdir)
    out: dict[str, Any] = {"outage": how, "seconds": seconds, "rate": rate,
                           "hold_ms": hold_ms, "long_calls": long_calls}
    long_uac: SippProcess | None = None
    try:
        sb.start(workdir / "first")
        wait_until("ready", lambda: ready(sb), 60)
        # The long calls: up before the outage, ended by their own BYEs after the restart.
        long_hold_ms = (3 * seconds + 40) * 1000
        long_uac = SippProcess("uac-long", uac_command(
            binary, uas=("127.0.0.1", uas_port), proxy=sb.address, local_port=free_port("udp"),
            rate=min(long_calls, 50), calls=long_calls, limit=long_calls,
            stat_file=str(workdir / "long.csv"), scenario=UAC_LONG_SCENARIO,
            timeout_s=long_hold_ms // 1000 + 120, extra=["-d", str(long_hold_ms)]),
            workdir / "long")
        wait_until("the long calls confirmed",
                   lambda: len(confirmed_ids(sb)) >= long_calls, 60)
        long_ids = confirmed_ids(sb)

        before = phase(binary, workdir / "before", sb, uas_port, rate, seconds, hold_ms)
        out["before"] = phase_result(before, seconds)
        assert redis.proc is not None
        if how == "kill":
            redis.kill()
        else:
            redis.proc.send_signal(signal.SIGSTOP)
        down = time.monotonic()
        during = phase(binary, workdir / "during", sb, uas_port, rate, seconds, hold_ms)
        out["noticed_down_s"] = round(wait_until(
            "store:available 0", lambda: available(sb) == 0, seconds + 30), 2)
        # The outage lasts `seconds` from the signal, whatever the MI polling took.
        time.sleep(max(0.0, seconds - (time.monotonic() - down)))
        if how == "kill":
            redis.start()  # empty: a Redis without persistence comes back so
        else:
            redis.proc.send_signal(signal.SIGCONT)
        up = time.monotonic()
        out["outage_s"] = round(up - down, 2)
        after = phase(binary, workdir / "after", sb, uas_port, rate, seconds, hold_ms)
        out["noticed_up_s"] = round(wait_until(
            "store:available 1", lambda: available(sb) == 1, 60), 2)
        out["during"] = phase_result(during, seconds)
        out["after"] = phase_result(after, seconds)
        time.sleep(1.0)  # the last writes of the calls that ended
        # Only the long calls are left: Redis must hold exactly them.
        live = confirmed_ids(sb)
        ids, keys = redis_ids(redis)
        out["check"] = {"live_confirmed": len(live), "long_calls_live": len(live & long_ids),
                        "redis_ids": len(ids), "redis_dialog_keys": keys,
                        "same_ids": ids == live, "store_stats": sb.statistics("store:")}

        # The proxy killed and started again on the same store and port.
        assert sb.proc is not None and sb.port is not None
        os.kill(sb.proc.pid, signal.SIGKILL)
        sb.proc.wait(10)
        sb.stop()
        started = time.monotonic()
        sb = SamePort(sb.port, config)
        sb.start(workdir / "restarted")
        wait_until("ready", lambda: ready(sb), 60)
        restored = confirmed_ids(sb)
        out["restart"] = {"ready_s": round(time.monotonic() - started, 2),
                          "restored": len(restored), "same_ids": restored == live,
                          "store_stats": sb.statistics("store:")}
        # The long calls end now, each with its BYE through the restarted proxy.
        long_uac.wait(long_hold_ms / 1000 + 120)
        long_stats = stats_of(workdir / "long.csv")
        time.sleep(1.0)
        ids, keys = redis_ids(redis)
        out["long"] = {"completed": stat_int(long_stats, "SuccessfulCall(C)"),
                       "failed": stat_int(long_stats, "FailedCall(C)"),
                       "listed_after": len(confirmed_ids(sb)), "redis_ids_after": len(ids),
                       "redis_dialog_keys_after": keys}
    finally:
        if long_uac is not None and long_uac.poll() is None:
            long_uac.stop()
        uas.stop()
        sb.stop()
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        redis.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=300, help="calls/s (default 300)")
    parser.add_argument("--seconds", type=int, default=20, help="seconds of calls (20)")
    parser.add_argument("--hold-ms", type=int, default=1000, help="call length, ms (1000)")
    parser.add_argument("--stores", default="memory,sqlite,redis",
                        help="the CPU runs (default memory,sqlite,redis; empty: none)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the CPU runs; medians reported (1)")
    parser.add_argument("--restart", default="10000",
                        help="stored dialog counts for the restart time (10000; empty: none)")
    parser.add_argument("--restart-stores", default="sqlite",
                        help="stores the restart time is measured on (sqlite; or sqlite,redis)")
    parser.add_argument("--redis-outage", type=int, default=0, metavar="SECONDS",
                        help="measure a Redis outage of SECONDS under load (0: not)")
    parser.add_argument("--outage-signal", default="kill,stop",
                        help="kill (SIGKILL, restarted empty) and/or stop (SIGSTOP, SIGCONT)")
    parser.add_argument("--outage-rate", type=int, default=100,
                        help="calls/s during the outage bench (100)")
    parser.add_argument("--long-calls", type=int, default=50,
                        help="calls held across the outage and the restart (50)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        base = Path(tmp)
        kinds = [k for k in args.stores.split(",") if k]
        redis: RedisServer | None = None
        if "redis" in kinds or "redis" in args.restart_stores.split(","):
            redis = RedisServer(base / "redis")
        try:
            runs: dict[str, list[float]] = {kind: [] for kind in kinds}
            # Rounds of one run of each, so that a machine's changing load spreads evenly.
            for round_no in range(args.repeat):
                for kind in kinds:
                    workdir = base / f"{kind}-{round_no}"
                    url = (None if kind == "memory" else
                           f"sqlite:{workdir / 'dialogs.sqlite'}" if kind == "sqlite" else
                           redis.url if redis is not None else None)
                    server_pid = (redis.proc.pid if kind == "redis" and redis is not None
                                  and redis.proc is not None else None)
                    run = cpu_per_call(workdir, url, args.rate, args.seconds, args.hold_ms,
                                       server_pid)
                    print(json.dumps(run), flush=True)
                    if not run["failed"]:  # a run with failed calls measured retransmissions
                        runs[kind].append(run["cpu_ms_per_call"])
            medians = {kind: statistics.median(v) for kind, v in runs.items() if v}
            print(json.dumps({"cpu_ms_per_call_median": medians,
                              "runs_without_failed_calls": {k: len(v) for k, v in runs.items()}}),
                  flush=True)
            if "memory" in medians:
                for kind, median in medians.items():
                    if kind != "memory":
                        extra = median / medians["memory"] - 1
                        print(f"CPU per call with the {kind} store: {extra:+.1%} against "
                              "memory only (medians)", flush=True)
            for kind in (k for k in args.restart_stores.split(",") if k):
                for count in (int(c) for c in args.restart.split(",") if c):
                    workdir = base / f"restart-{kind}-{count}"
                    url = (f"sqlite:{workdir / 'dialogs.sqlite'}" if kind == "sqlite"
                           else redis.url if redis is not None else "")
                    print(json.dumps({"restart": count, **restart_time(workdir, url, count)}),
                          flush=True)
        finally:
            if redis is not None:
                redis.close()
        if args.redis_outage:
            for how in (h for h in args.outage_signal.split(",") if h):
                print(json.dumps(redis_outage(
                    base / f"outage-{how}", how, args.redis_outage, args.outage_rate,
                    args.hold_ms, args.long_calls)), flush=True)


if __name__ == "__main__":
    main()
