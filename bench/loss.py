"""`python -m bench.loss`: call completion through switchboard over lossy UDP links.

For each loss rate (default 0, 5, 10 and 20 %), a fresh `switchboard serve` and two
fault-injecting relays (tests/interop/lossy.py), one in front of a SIPp caller and one in
front of a SIPp callee, each dropping that share of the datagrams in both directions (plus,
with --duplicate/--reorder, duplicating or holding some back). The caller places --calls basic
calls (INVITE/200/ACK, BYE/200; tests/interop/scenarios/loss/) at --rate calls/s; nothing
but SIP retransmissions repairs the loss (SIPp's T1 500 ms, 7 INVITE and 10 non-INVITE
retransmissions, T2 4 s; switchboard's transaction timers).

Reported per rate: calls completed on both sides (completion rate), failed calls and why,
SIPp retransmissions, datagrams dropped by the relays. Written to stdout and, as JSON, to
bench/results/<timestamp>-loss.json (--out DIR elsewhere). Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.interop.lossy import Faults, RelayPool
from tests.support.ports import HOST, free_port
from tests.support.server import start_switchboard
from tests.support.sipp import Sipp, sipp_binary

REPO = Path(__file__).resolve().parent.parent

SCENARIOS = REPO / "tests" / "interop" / "scenarios" / "loss"
SIPP_RETRANS = ("-max_invite_retrans", "7", "-max_non_invite_retrans", "10", "-T2", "4000")


def run_rate(loss: float, args: argparse.Namespace, workdir: Path, seed: int) -> dict[str, Any]:
    faults = Faults(loss=loss, duplicate=args.duplicate, reorder=args.reorder)
    log_dir = workdir / f"loss-{int(loss * 100):02d}"
    server = start_switchboard(log_dir=log_dir, tcp=False)
    started = time.monotonic()
    try:
        with RelayPool() as relays:
            uas_port = free_port("udp")
            b_relay = relays.relay(server.udp_address, ua=(HOST, uas_port),
                                   faults=faults, seed=seed + 1)
            a_relay = relays.relay(server.udp_address, faults=faults, seed=seed)
            timeout = args.calls / args.rate + 90
            uas = Sipp(
                "uas", SCENARIOS / "uas.xml", log_dir=log_dir, local_port=uas_port,
                calls=args.calls, timeout=timeout, trace_msg=False,
                keys={"contact_port": b_relay.sb_port}, extra_args=SIPP_RETRANS,
            ).start().wait_listening()
            uac = Sipp(
                "uac", SCENARIOS / "uac.xml", log_dir=log_dir,
                remote=f"{HOST}:{a_relay.ua_port}", local_port=free_port("udp"),
                calls=args.calls, rate=args.rate, timeout=timeout, trace_msg=False,
                keys={"uas_port": b_relay.sb_port, "contact_port": a_relay.sb_port},
                extra_args=SIPP_RETRANS,
            ).start()
            uac_result = uac.wait()
            uas_result = uas.wait(None if uac_result.returncode == 0 else 15.0)
            totals = relays.totals()
    finally:
        server.stop()
    ok = min(uac_result.successful, uas_result.successful)
    reasons = {
        k.removesuffix("(C)"): int(v)
        for k, v in uac_result.stats.items()
        if k.startswith("Failed") and k.endswith("(C)") and v.isdigit() and int(v) > 0
    }
    return {
        "loss": loss,
        "calls": args.calls,
        "completed": ok,
        "completion_rate": ok / args.calls if args.calls else 0.0,
        "caller_successful": uac_result.successful,
        "callee_successful": uas_result.successful,
        "caller_failed": uac_result.failed,
        "callee_failed": uas_result.failed,
        "failure_reasons": reasons,
        "sipp_retransmissions": max(0, uac_result.count("Retransmissions"))
        + max(0, uas_result.count("Retransmissions")),
        "relay": {direction: asdict(c) for direction, c in totals.items()},
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loss", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--losses", default="0,5,10,20", help="loss rates in %% (default 0-20)")
    parser.add_argument("--calls", type=int, default=100, help="calls per rate (default 100)")
    parser.add_argument("--rate", type=float, default=10.0, help="calls/s (default 10)")
    parser.add_argument("--duplicate", type=float, default=0.0, help="share duplicated (0-1)")
    parser.add_argument("--reorder", type=float, default=0.0, help="share held back 50 ms (0-1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if sipp_binary() is None:
        print("sipp not found: apt-get install sip-tester", file=sys.stderr)
        return 2
    losses = [float(x) / 100 for x in args.losses.split(",") if x.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loss-") as tmp:
        for loss in losses:
            row = run_rate(loss, args, Path(tmp), args.seed)
            rows.append(row)
            print(
                f"loss {loss:>4.0%} each way: {row['completed']:>4}/{row['calls']} calls "
                f"completed ({row['completion_rate']:.1%}), failed {row['failure_reasons'] or 0}, "
                f"SIPp retransmissions {row['sipp_retransmissions']}, relay dropped "
                f"{row['relay']['up']['dropped']} up / {row['relay']['down']['dropped']} down, "
                f"{row['seconds']} s",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"{stamp}-loss.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path.write_text(json.dumps({"settings": settings, "rates": rows}, indent=2) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
