"""The pure parts of the bench's TLS and WebSocket part (bench/tls.py): a step's record from a
call-rate step, the side-by-side rows and ratios, bytes per idle connection, the stunnel
client's configuration, the OPTIONS probe, the markdown and the command line. No processes,
no sockets: made-up numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import callrate, report, suite, tls
from bench.tls import IdleMemory, TransportStep, per_connection, side_by_side, transport_step
from switchboard.sip.message import parse_message


def step(system: str, mode: str, rate: float, cpu: float | None, *, clean: bool = True,
         ok: int = 1000) -> TransportStep:
    return TransportStep(system=system, mode=mode, offered_rate=rate, planned_calls=ok,
                         successful_calls=ok, cpu_ms_per_call=cpu, clean=clean,
                         reasons=[] if clean else ["3 failed calls"])


def test_a_call_rate_step_becomes_a_transport_step_with_stunnel_apart() -> None:
    base = callrate.StepResult(offered_rate=200.0, duration_s=10.0, planned_calls=2000,
                               successful_calls=2000, failed_calls=0, completed_rate=199.0,
                               proxy_cpu_s=1.2, cpu_ms_per_call=0.6, rtt_p50_ms=1.0,
                               rtt_p99_ms=4.0, clean=True)
    out = transport_step("kamailio", "tls-per-call", base, stunnel_cpu_s=3.0)
    assert (out.system, out.mode, out.offered_rate) == ("kamailio", "tls-per-call", 200.0)
    assert out.cpu_ms_per_call == 0.6  # the proxy's own, stunnel not in it
    assert out.stunnel_cpu_ms_per_call == 1.5
    assert out.clean and out.reasons == []
    # Over UDP there is no stunnel, and no calls means no per-call figure.
    assert transport_step("kamailio", "udp", base).stunnel_cpu_ms_per_call is None
    none = callrate.StepResult(offered_rate=200.0, duration_s=10.0, planned_calls=2000)
    assert transport_step("switchboard", "tls", none, 1.0).stunnel_cpu_ms_per_call is None


def test_side_by_side_pairs_systems_per_mode_and_rate_and_compares_with_udp() -> None:
    steps = [
        step("switchboard", "udp", 200, 0.40), step("kamailio", "udp", 200, 0.20),
        step("switchboard", "tls", 200, 0.60), step("kamailio", "tls", 200, 0.40),
        step("switchboard", "tls-per-call", 200, 2.0),
        step("kamailio", "tls-per-call", 200, 1.0, clean=False),
        step("switchboard", "tls", 500, 0.5),  # no UDP step at 500, no Kamailio step
    ]
    rows = side_by_side(steps)
    assert [(r["mode"], r["offered_rate"]) for r in rows] == [
        ("udp", 200), ("tls", 200), ("tls-per-call", 200), ("tls", 500)]
    udp, tls_row, per_call, lone = rows
    assert udp["cpu_ratio"] == 2.0
    assert udp["systems"]["switchboard"]["vs_udp"] == 1.0
    assert tls_row["cpu_ratio"] == 1.5
    assert tls_row["systems"]["switchboard"]["vs_udp"] == 1.5
    assert tls_row["systems"]["kamailio"]["vs_udp"] == 2.0
    # An unclean step is shown but compared with nothing.
    assert per_call["cpu_ratio"] is None
    assert per_call["systems"]["kamailio"]["vs_udp"] is None
    assert per_call["systems"]["switchboard"]["vs_udp"] == 5.0
    assert lone["cpu_ratio"] is None and lone["systems"]["switchboard"]["vs_udp"] is None


def test_bytes_per_idle_connection() -> None:
    assert per_connection(1000, 1000 + 25_000 * 4, 4) == 25_000.0
    assert per_connection(5000, 4000, 1000) == -1.0  # memory given back shows as such
    assert per_connection(0, 100, 0) is None
    m = IdleMemory(system="kamailio", kind="tls", connections=10_000, opened=10_000,
                   rss_kb_before=100_000, rss_kb_after=300_000, pss_kb_before=50_000,
                   pss_kb_after=100_000, shm_bytes_before=10_000_000,
                   shm_bytes_after=710_000_000)
    m.account()
    assert m.pss_bytes_per_connection == 5120.0
    assert m.rss_bytes_per_connection == 20480.0
    assert m.shm_bytes_per_connection == 70_000.0
    sb = IdleMemory(system="switchboard", kind="wss", connections=10, opened=8,
                    pss_kb_before=10, pss_kb_after=90)
    sb.account()
    assert sb.pss_bytes_per_connection == 10240.0  # per connection actually opened
    assert sb.shm_bytes_per_connection is None


def test_stunnel_client_config_verifies_the_proxy_and_resumes_no_session() -> None:
    text = tls.stunnel_config(Path("/x/stunnel.log"), 7000, 7001, Path("/x/ca.pem"))
    lines = set(text.splitlines())
    assert {"client = yes", "accept = 127.0.0.1:7000", "connect = 127.0.0.1:7001",
            "CAfile = /x/ca.pem", "verifyChain = yes", "checkHost = localhost",
            "sni = localhost", "sessionResume = no", "foreground = yes"} <= lines
    assert "sessionResume = yes" in tls.stunnel_config(
        Path("/x/l"), 1, 2, Path("/x/ca"), resume=True).splitlines()


@pytest.mark.parametrize(("transport", "sent_by_end"), [("TLS", "127.0.0.1:5070"),
                                                        ("WSS", ".invalid")])
def test_the_idle_probe_is_an_options_the_proxy_answers_itself(transport: str,
                                                               sent_by_end: str) -> None:
    data = tls.options_probe(transport, 5070)
    msg = parse_message(data)
    assert data.startswith(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n")
    via = msg.get("via")
    assert via is not None and via.startswith(f"SIP/2.0/{transport} ")
    assert via.split(";")[0].endswith(sent_by_end)
    assert msg.get("max-forwards") == "0"


def test_markdown_shows_both_systems_the_ratio_and_the_memory() -> None:
    data = {
        "settings": tls.Plan(rates=(200.0,), connections=10_000).settings(),
        "steps": [s.to_json() for s in (
            step("switchboard", "udp", 200, 0.40), step("kamailio", "udp", 200, 0.20),
            step("switchboard", "tls", 200, 0.60), step("kamailio", "tls", 200, 0.40))],
        "memory": [
            IdleMemory(system="switchboard", kind="tls", connections=10_000, opened=10_000,
                       pss_kb_before=40_000, pss_kb_after=240_000,
                       pss_bytes_per_connection=20480.0).to_json(),
            IdleMemory(system="kamailio", kind="wss", connections=10_000,
                       error=tls.NO_KAMAILIO_WSS).to_json(),
        ],
    }
    text = "\n".join(tls.markdown(data))
    assert text.startswith("## TLS and WebSocket")
    assert "| udp | 200 | switchboard | 0.0 | 1000 / 0 | — / — | 0.400 | 1.00x | — | yes | 2.00x |" in text
    assert "| tls | 200 | switchboard |" in text and "| 1.50x |" in text
    assert "| switchboard | TLS | 10000 / 10000 | 0 | 39.1 → 234.4 | 20,480 |" in text
    assert f"| kamailio | WSS | — | — | {tls.NO_KAMAILIO_WSS} |" in text


def test_the_report_renders_the_tls_part_of_a_suite_result() -> None:
    result = report.build_result(
        started="s", finished="f", mode="full", settings={}, host={}, runs={},
        parts={"tls": {"settings": {}, "steps": [step("switchboard", "tls", 200, 0.6).to_json()],
                       "memory": []}})
    assert "## TLS and WebSocket" in report.markdown(result, [])


def test_the_command_line_plan() -> None:
    plan = tls.plan_of(tls.parse_args(["--rates", "100,300", "--duration", "4",
                                       "--modes", "udp,tls", "--connections", "500"]))
    assert plan.rates == (100.0, 300.0) and plan.duration == 4.0
    assert plan.modes == ("udp", "tls") and plan.connections == 500
    assert plan.estimate_seconds() > 2 * 2 * 2 * 4
    assert plan.kamailio_websocket
    assert not tls.plan_of(tls.parse_args(["--no-kamailio-websocket"])).kamailio_websocket
    with pytest.raises(SystemExit):
        tls.plan_of(tls.parse_args(["--modes", "sctp"]))


def test_the_suite_runs_tls_on_request_only_and_last() -> None:
    assert suite.parse_parts("tls,callrate") == ("callrate", "tls")
    assert "tls" not in suite.parse_parts(suite.parse_args([]).only)
    pp = suite.make_parts_plan(suite.parse_args(["--tls-rates", "100", "--tls-connections",
                                                 "50"]))
    plan = pp.tls_plan(["switchboard"], kamailio_children=3)
    assert plan.rates == (100.0,) and plan.connections == 50
    assert plan.systems == ("switchboard",) and plan.kamailio_children == 3
    assert pp.estimate_seconds(["tls"]) == pp.tls_plan(suite.TLS_SYSTEMS).estimate_seconds()


def test_markdown_says_when_a_system_exited() -> None:
    data = {"settings": {}, "steps": [step("kamailio", "tls", 200, 0.4, clean=False).to_json()],
            "memory": [IdleMemory(system="kamailio", kind="tls", connections=10,
                                  error="kamailio had exited").to_json()],
            "exited": {"kamailio": "x\n ALERT: child process 42 exited by a signal 11\n"}}
    text = "\n".join(tls.markdown(data))
    assert ("**kamailio exited during the part** (its later steps were not run); its log's "
            "last line: ` ALERT: child process 42 exited by a signal 11`") in text
    assert "| kamailio | TLS | — | — | kamailio had exited |" in text
