"""Soak: switchboard under a steady load with transfers and holds for a long time; does its
memory stay flat, and do its dialog and transaction counts come back to zero afterwards?

`python -m bench.soak [--minutes 30]` (not in CI; `--minutes 3` for a short check). One
switchboard (local runtime) carries, all on 127.0.0.1:

- short calls from SIPp at `--rate` calls/s (scenarios/uac.xml);
- long calls from SIPp, `--hold` seconds each, started at `--long-rate` calls/s
  (scenarios/uac_long.xml), so about long-rate x hold of them are up at any time;
- `--calls` calls between the Python user agents of bench/party.py, with `--ops-rate`
  management operations per second sent over the MI round robin: hold, unhold, then a blind
  transfer that is carried out (the callee makes the new call to the transfer target through
  the proxy, NOTIFYs 200, the proxy ends the old call), and each call hung up after
  `--call-age` seconds and replaced, so the set of calls keeps turning over.

Every `--every` seconds (10) it samples the proxy's RSS and PSS and its counters (confirmed and
early dialogs, transactions in use, dropped events, shed requests) into the JSON. After the
load stops it waits (up to `--drain` seconds) for dialogs and transactions to go back to zero.
Flat: the RSS of the second half of the load grows by less than 5 % and less than 8 MB
(least-squares fit over those samples, so one sample's noise does not decide it).

Writes `<out>/<timestamp>-soak.json`, `.md` and `-soak.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.sipp import sipp_binary

from . import proc, render, report, sipp
from .callops import AsyncMi
from .load import Uacs, Uas, failure, stop_all
from .party import Party
from .systems import Switchboard

FLAT_PCT = 5.0
FLAT_MB = 8.0
COUNTERS = ("dialog:active_dialogs", "dialog:early_dialogs", "tm:inuse_transactions",
            "evi:dropped_events", "core:shed_requests", "dialog:processed_dialogs")


# --- pure ------------------------------------------------------------------------------------


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than two points."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def flatness(samples: Sequence[dict[str, Any]], load_s: float) -> dict[str, Any]:
    """RSS over the second half of the load: fitted growth (MB, %) and the verdict (pure)."""
    half = [s for s in samples if load_s / 2 <= s["t_s"] <= load_s + 1e-6]
    out: dict[str, Any] = {"samples": len(half)}
    if len(half) < 2:
        out["flat"] = None
        return out
    xs = [s["t_s"] for s in half]
    ys = [s["rss_kb"] / 1024 for s in half]
    k = slope(xs, ys) or 0.0
    growth_mb = k * (xs[-1] - xs[0])
    base = ys[0] or 1.0
    out.update(rss_mb_start=round(ys[0], 1), rss_mb_end=round(ys[-1], 1),
               fitted_growth_mb=round(growth_mb, 2),
               fitted_growth_pct=round(100 * growth_mb / base, 2),
               mb_per_hour=round(k * 3600, 1))
    out["flat"] = growth_mb < FLAT_MB and 100 * growth_mb / base < FLAT_PCT
    return out


# --- the run ----------------------------------------------------------------------------------


class Soak:
    def __init__(self, system: Switchboard, args: argparse.Namespace) -> None:
        self.system = system
        self.args = args
        self.samples: list[dict[str, Any]] = []
        self.ops: dict[str, int] = {}
        self.op_errors: dict[str, int] = {}
        self.t0 = 0.0
        self.party: Party | None = None

    def sample(self, phase: str) -> dict[str, Any]:
        mem = proc.memory(self.system.pids())
        try:
            stats = self.system.statistics(*COUNTERS)
        except Exception as exc:  # keep sampling; say why this one has no counters
            stats = {"error": str(exc)[:80]}  # type: ignore[dict-item]
        row = {"t_s": round(time.monotonic() - self.t0, 1), "phase": phase,
               "rss_kb": mem.rss_kb, "pss_kb": mem.pss_kb,
               "cpu_s": round(proc.cpu_seconds(self.system.pids()), 2), **stats}
        if self.party is not None:
            row["party_legs"] = len(self.party.legs)
        self.samples.append(row)
        return row

    async def operate(self, load_s: float) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        party = self.party = Party(self.system.address, follow_refer=True)
        party.start()
        mi = AsyncMi("127.0.0.1", self.system.mi_port or 0)
        await mi.connect()
        born: dict[str, float] = {}
        next_op: dict[str, int] = {}
        cycle = ("hold", "unhold", "transfer")
        end = loop.time() + load_s
        next_sample = loop.time()
        tick = 1.0 / max(a.ops_rate, 1.0)
        rng = random.Random(4)
        try:
            for _ in range(int(load_s / tick) + 10):  # bounded; the clock ends it
                now = loop.time()
                if now >= end:
                    break
                if now >= next_sample:
                    await loop.run_in_executor(None, self.sample, "load")
                    next_sample += a.every
                up = _calls_up(party)
                for call_id in up:
                    born.setdefault(call_id, now)
                for call_id in [c for c in up if now - born[c] > a.call_age]:
                    party.hang_up(call_id)
                    born.pop(call_id, None)
                    next_op.pop(call_id, None)
                for _ in range(min(20, a.calls - len(up))):
                    party.place_call()
                party.forget_ended()
                ready = [c for c in up if c in born and now - born[c] > 0.5]
                if ready and a.ops_rate > 0:
                    call_id = rng.choice(ready)
                    i = next_op.get(call_id, 0)
                    next_op[call_id] = i + 1
                    op = cycle[i % 3]
                    params: dict[str, Any] = {"callid": call_id}
                    if op == "transfer":
                        params.update(leg="callee", destination=f"sip:c@{party.host}")
                    self.ops[op] = self.ops.get(op, 0) + 1
                    try:
                        await asyncio.wait_for(mi.call(f"callops:{op}", params, lambda ns: None),
                                               10)
                    except Exception as exc:
                        key = f"{op}: {str(exc)[:60]}"
                        self.op_errors[key] = self.op_errors.get(key, 0) + 1
                        if "HTTP" in str(exc) or isinstance(exc, (OSError, TimeoutError)):
                            await mi.close()
                            mi = AsyncMi("127.0.0.1", self.system.mi_port or 0)
                            await mi.connect()
                await asyncio.sleep(max(0.0, tick - (loop.time() - now)))
            for call_id in _calls_up(party):
                party.hang_up(call_id)
            await asyncio.sleep(1.0)
        finally:
            await mi.close()


def _calls_up(party: Party) -> list[str]:
    """Call-IDs whose legs on our side are all confirmed, each once (calls we placed and
    calls a transfer made)."""
    legs: dict[str, list[str]] = {}
    for leg in party.legs.values():
        legs.setdefault(leg.call_id, []).append(leg.state)
    return [c for c, states in legs.items()
            if len(states) == 2 and all(s == "confirmed" for s in states)]


def run(args: argparse.Namespace, workdir: Path, say: Any = print) -> dict[str, Any]:
    binary = sipp_binary()
    if binary is None:
        raise SystemExit("SIPp is needed: apt-get install -y sip-tester")
    system = Switchboard()
    load_s = args.minutes * 60
    out: dict[str, Any] = {"kind": "soak", "settings": {
        k: getattr(args, k) for k in ("minutes", "rate", "long_rate", "hold", "calls",
                                      "ops_rate", "call_age", "every", "drain")}}
    soak = Soak(system, args)
    uas: Uas | None = None
    loads: list[Uacs] = []
    try:
        system.start(workdir)
        out["system"] = system.describe()
        time.sleep(1.0)
        soak.t0 = time.monotonic()
        soak.sample("idle")
        limit = int(load_s + args.hold + 120)
        uas = Uas(binary, workdir, timeout_s=limit + int(args.drain))
        if args.rate > 0:
            loads.append(Uacs(binary, system, workdir / "short", name="short", uas=uas,
                              rate=args.rate, calls=max(1, int(args.rate * load_s)),
                              timeout_s=limit))
        if args.long_rate > 0:
            calls = max(1, int(args.long_rate * max(1.0, load_s - args.hold)))
            loads.append(Uacs(binary, system, workdir / "long", name="long", uas=uas,
                              rate=args.long_rate, calls=calls,
                              scenario=sipp.UAC_LONG_SCENARIO,
                              extra=["-d", str(int(args.hold * 1000))],
                              limit=int(args.long_rate * args.hold * 1.5) + 50,
                              timeout_s=limit))
        say(f"soak: {args.minutes:g} min of {args.rate:g} short calls/s, "
            f"{args.long_rate:g} long calls/s of {args.hold:g} s, {args.calls} operated calls "
            f"with {args.ops_rate:g} operations/s; a sample every {args.every:g} s")
        asyncio.run(soak.operate(load_s))
        for load in loads:
            load.stop()
        # Drain: calls and transactions end; counts back to zero?
        deadline = time.monotonic() + args.drain
        drained = False
        while time.monotonic() < deadline:
            row = soak.sample("drain")
            if row.get("dialog:active_dialogs") == 0 and row.get(
                    "dialog:early_dialogs") == 0 and row.get("tm:inuse_transactions") == 0:
                drained = True
                break
            time.sleep(min(args.every, 5.0))
        out["drained"] = drained
        out["after_drain"] = soak.samples[-1] if soak.samples else {}
        background: dict[str, Any] = {}
        for load in loads:
            st = load.stats()
            name = load.procs[0].name if load.procs else "?"
            background[name] = {"started": sipp.stat_int(st, "OutgoingCall(C)"),
                                "ok": sipp.stat_int(st, "SuccessfulCall(C)"),
                                "failed": sipp.stat_int(st, "FailedCall(C)"),
                                "retransmissions": sipp.stat_int(st, "Retransmissions(C)")}
        out["background"] = background
    except Exception as exc:
        out["error"] = failure(exc)
    finally:
        stop_all(system, *loads, uas)
    out["samples"] = soak.samples
    out["operations"] = soak.ops
    out["operation_errors"] = soak.op_errors
    if soak.party is not None:
        out["party"] = {"counts": dict(sorted(soak.party.counts.items())),
                        "transfers_done": soak.party.transfers_done}
    out["flatness"] = flatness([s for s in soak.samples if s["phase"] == "load"], load_s)
    return out


# --- report -----------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    st, fl = data.get("settings", {}), data.get("flatness", {})
    samples = data.get("samples", [])
    verdict = {True: "**flat**", False: "**not flat**", None: "not enough samples"}[
        fl.get("flat")]
    drained = ", ".join(f"{k} {v}" for k, v in data.get("after_drain", {}).items() if ":" in k)
    lines = render.section(
        f"# switchboard soak — {data.get('started', '')}",
        [f"{st.get('minutes')} min: {st.get('rate')} short calls/s, {st.get('long_rate')} "
         f"long calls/s of {st.get('hold')} s, {st.get('calls')} operated calls with "
         f"{st.get('ops_rate')} operations/s (hold, unhold, blind transfer carried out), calls "
         f"hung up after {st.get('call_age')} s. Sample every {st.get('every')} s.",
         f"RSS over the second half of the load: {verdict} — fitted growth "
         f"{fl.get('fitted_growth_mb')} MB ({fl.get('fitted_growth_pct')} %, "
         f"{fl.get('mb_per_hour')} MB/hour) from {fl.get('rss_mb_start')} to "
         f"{fl.get('rss_mb_end')} MB (flat: under {FLAT_PCT:g} % and {FLAT_MB:g} MB).",
         f"After the load: dialogs and transactions back to zero: "
         f"{'yes' if data.get('drained') else '**no**'} ({drained}).",
         f"Operations sent: {data.get('operations')}; refused: "
         f"{data.get('operation_errors') or 'none'}; transfers carried out: "
         f"{data.get('party', {}).get('transfers_done')}. Background calls: "
         f"{data.get('background')}."],
        data.get("error"),
        "| t s | phase | RSS MB | PSS MB | dialogs | early | transactions | CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    )
    for s in samples:
        lines.append(f"| {s['t_s']:g} | {s['phase']} | {s['rss_kb'] / 1024:.1f} "
                     f"| {s['pss_kb'] / 1024:.1f} | {s.get('dialog:active_dialogs', '—')} "
                     f"| {s.get('dialog:early_dialogs', '—')} "
                     f"| {s.get('tm:inuse_transactions', '—')} | {s.get('cpu_s', '—')} |")
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data.get("samples", [])
    if not samples:
        return []
    t = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(t, [s["rss_kb"] / 1024 for s in samples], marker=".", label="RSS MB")
    ax.plot(t, [s["pss_kb"] / 1024 for s in samples], marker=".", label="PSS MB")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [s.get("dialog:active_dialogs", 0) or 0 for s in samples], color="green",
             linestyle="--", label="dialogs")
    ax2.plot(t, [s.get("tm:inuse_transactions", 0) or 0 for s in samples], color="red",
             linestyle=":", label="transactions")
    ax2.set_ylabel("count")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
    ax.set_title("switchboard soak: memory and counts")
    ax.grid(True, alpha=0.3)
    path = stem.with_name(stem.name + "-soak.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak",
                                description="switchboard under steady load with transfers and "
                                            "holds: RSS and counts over time (not for CI)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=100.0, help="short calls/s (SIPp)")
    p.add_argument("--long-rate", type=float, default=20.0, help="long calls started per s")
    p.add_argument("--hold", type=float, default=30.0, help="seconds a long call lasts")
    p.add_argument("--calls", type=int, default=50, help="calls the operations act on")
    p.add_argument("--ops-rate", type=float, default=20.0, help="MI operations per second")
    p.add_argument("--call-age", type=float, default=20.0,
                   help="seconds before an operated call is hung up and replaced")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--drain", type=float, default=90.0,
                   help="seconds to wait after the load for the counts to reach zero")
    p.add_argument("--out", type=Path, default=report.RESULTS)
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .suite import stop_on_sigterm

    args = parse_args(argv)
    stop_on_sigterm()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        data = run(args, Path(tmp))
    data["started"] = started
    data["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{stamp}-soak"
    import json

    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    pngs: list[Path] = []
    if not args.no_plots:
        try:
            pngs = plot(data, args.out / stamp)
        except ImportError:
            pngs = []
    text = markdown(data) + "".join(f"\n![{p.stem}]({p.name})\n" for p in pngs)
    stem.with_suffix(".md").write_text(text)
    fl = data.get("flatness", {})
    print(f"soak: RSS {fl.get('rss_mb_start')} → {fl.get('rss_mb_end')} MB over the second half, "
          f"fitted growth {fl.get('fitted_growth_mb')} MB ({fl.get('fitted_growth_pct')} %): "
          f"{'flat' if fl.get('flat') else 'NOT flat' if fl.get('flat') is False else '?'}; "
          f"drained to zero: {data.get('drained')}; error: {data.get('error')}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}"
          + "".join(f", {p.name}" for p in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
