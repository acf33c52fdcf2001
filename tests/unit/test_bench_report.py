"""The pure parts of the benchmark suite (bench/): SIPp output parsing, the clean-step rule,
the summary of one step, the headline ratios and the JSON/markdown report. No timing, no
processes: every input is recorded or made-up text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import callrate, proc, report, sipp, suite
from bench.callrate import StepResult, SystemRun, highest_clean_rate, judge_step

# A statistics file as SIPp 3.6.1 writes it (-trace_stat -stf): header, periodic rows, the
# final row. Dates hold tabs, not semicolons; every line ends with `;`.
STAT_HEADER = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;CallRate(P);"
    "CallRate(C);IncomingCall(P);IncomingCall(C);OutgoingCall(P);OutgoingCall(C);"
    "TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);"
    "FailedCall(C);Retransmissions(P);Retransmissions(C);ResponseTimeinvite(P);"
    "ResponseTimeinvite(C);"
)
STAT_TEXT = "\n".join([
    STAT_HEADER,
    "2026-11-29\t16:36:23.541094\t1795970183.541094;2026-11-29\t16:36:23.541094\t1795970183.541094;"
    "2026-11-29\t16:36:24.541094\t1795970184.541094;00:00:01;00:00:01;100;99.5;99.5;0;0;99;99;"
    "99;2;97;97;0;0;0;0;00:00:00:000000;00:00:00:000000;",
    "2026-11-29\t16:36:23.541094\t1795970183.541094;2026-11-29\t16:36:26.549601\t1795970186.549601;"
    "2026-11-29\t16:36:26.549677\t1795970186.549677;00:00:00;00:00:03;100;0;99.734;0;0;0;300;"
    "300;0;0;298;0;2;1;7;00:00:00:001000;00:00:00:004000;",
    "",
])

RTT_TEXT = """Date_ms;response_time_ms;rtd_no
12.001;0;invite
24.001;1;invite
36.002;3;invite
37.002;9;other
48.003;2;invite
"""


# --- SIPp output -----------------------------------------------------------------------------


def test_stat_csv_gives_the_last_row_by_column() -> None:
    stats = sipp.parse_stat_csv(STAT_TEXT)
    assert sipp.stat_int(stats, "SuccessfulCall(C)") == 298
    assert sipp.stat_int(stats, "FailedCall(C)") == 2
    assert sipp.stat_int(stats, "Retransmissions(C)") == 7
    assert sipp.stat_int(stats, "OutgoingCall(C)") == 300
    assert stats["CurrentTime"].endswith("1795970186.549677")
    assert sipp.parse_duration_ms(stats["ResponseTimeinvite(C)"]) == pytest.approx(4.0)


def test_stat_csv_without_rows_or_columns_reads_as_zero() -> None:
    assert sipp.parse_stat_csv("") == {}
    assert sipp.parse_stat_csv(STAT_HEADER + "\n") == {}
    stats = sipp.parse_stat_csv(STAT_TEXT)
    assert sipp.stat_int(stats, "NoSuchColumn(C)") == 0
    assert sipp.stat_int({"X": ""}, "X") == 0


@pytest.mark.parametrize(("text", "ms"), [
    ("00:00:00:000000", 0.0),
    ("00:00:01:099000", 1099.0),
    ("01:02:03", 3723000.0),
    ("00:00:00:000250", 0.25),
    ("garbage", None),
    ("", None),
])
def test_sipp_durations(text: str, ms: float | None) -> None:
    assert sipp.parse_duration_ms(text) == ms


def test_rtt_trace_keeps_the_named_timer_only() -> None:
    assert sipp.parse_rtt_csv(RTT_TEXT) == [0.0, 1.0, 3.0, 2.0]
    assert sipp.parse_rtt_csv(RTT_TEXT, "other") == [9.0]
    assert sipp.parse_rtt_csv("Date_ms;response_time_ms;rtd_no\n") == []


def test_rtt_files_are_read_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "uac_123_rtt.csv").write_text(RTT_TEXT)
    (tmp_path / "uac_stat.csv").write_text(STAT_TEXT)
    assert sorted(sipp.read_rtts(tmp_path)) == [0.0, 1.0, 2.0, 3.0]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert sipp.percentile(values, 50) == 50.0
    assert sipp.percentile(values, 99) == 99.0
    assert sipp.percentile(values, 100) == 100.0
    assert sipp.percentile([5.0], 99) == 5.0
    assert sipp.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert sipp.percentile([], 50) is None


@pytest.mark.parametrize(("calls", "freq"), [(1000, 200), (1250, 125), (600, 200), (7, 7),
                                             (997, 1), (0, 1)])
def test_rtt_dump_frequency_divides_the_call_count(calls: int, freq: int) -> None:
    assert sipp.rtt_freq_for(calls) == freq
    if calls:
        assert calls % freq == 0


def test_the_shipped_scenarios_send_six_messages_per_call() -> None:
    uac = sipp.UAC_SCENARIO.read_text()
    uas = sipp.UAS_SCENARIO.read_text()
    assert sipp.sends_per_call(uac) == 3  # INVITE, ACK, BYE
    assert sipp.sends_per_call(uas) == 3  # 180, 200, 200 to the BYE
    assert 'start_rtd="invite"' in uac and 'rtd="invite"' in uac


def test_uac_command_sends_through_the_proxy_to_the_uas() -> None:
    cmd = sipp.uac_command("sipp", uas=("127.0.0.1", 5070), proxy=("127.0.0.1", 5060),
                           local_port=5090, rate=250, calls=1250, stat_file="uac.csv")
    assert cmd[1] == "127.0.0.1:5070"
    assert cmd[cmd.index("-rsa") + 1] == "127.0.0.1:5060"
    assert cmd[cmd.index("-r") + 1] == "250"
    assert cmd[cmd.index("-m") + 1] == "1250"
    assert cmd[cmd.index("-rtt_freq") + 1] == "125"
    assert "-trace_rtt" in cmd and "-nostdin" in cmd


# --- /proc parsing ---------------------------------------------------------------------------


def test_proc_stat_parsing_survives_odd_command_names() -> None:
    text = ("1234 (we ird) (name)) S 77 1234 1234 0 -1 4194560 100 0 0 0 "
            "250 31 0 0 20 0 3 0 100 1000 200")
    assert proc.parse_stat(text) == (77, 250, 31)


def test_kb_fields_of_proc_files() -> None:
    text = "Rss:                1000 kB\nPss:                 400 kB\nPss_Anon: 10 kB\n"
    assert proc.parse_kb_field(text, "Rss") == 1000
    assert proc.parse_kb_field(text, "Pss") == 400
    assert proc.parse_kb_field(text, "Swap") == 0


def test_udp_drops_are_read_per_port() -> None:
    text = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        " 2468: 0100007F:A77D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 100374 2 00000000fe44e125 44\n"
        " 2469: 0100007F:A77D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 100375 2 00000000fe44e126 6\n"
        "12694: 0100007F:8F6F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 100420 2 000000006e7a8012 0\n"
    )
    assert proc.parse_udp_drops(text, {0xA77D}) == 50  # two sockets on one port (children)
    assert proc.parse_udp_drops(text, {0x8F6F}) == 0
    assert proc.parse_udp_drops(text, {1}) == 0


def test_busy_share_is_in_percent_of_one_core() -> None:
    assert proc.busy_pct_of_one_core(50, 100, cpus=2) == 100.0
    assert proc.busy_pct_of_one_core(100, 100, cpus=2) == 200.0
    assert proc.busy_pct_of_one_core(1, 0, cpus=2) == 0.0


# --- the clean-step rule ---------------------------------------------------------------------


def _judge(**overrides: float) -> callrate.Verdict:
    args: dict[str, float] = {"planned": 1000, "successful": 1000, "failed": 0,
                              "retransmissions": 0, "messages": 6000, "offered_rate": 200,
                              "completed_rate": 199}
    args.update(overrides)
    return judge_step(**args)  # type: ignore[arg-type]


def test_a_step_without_failures_or_retransmissions_is_clean() -> None:
    verdict = _judge()
    assert verdict.clean and verdict.reasons == ()


def test_one_failed_call_makes_a_step_unclean() -> None:
    verdict = _judge(successful=999, failed=1)
    assert not verdict.clean
    assert verdict.reasons == ("1 failed calls",)


def test_retransmissions_are_allowed_below_one_percent_of_messages() -> None:
    assert _judge(retransmissions=59).clean  # 0.98 %
    verdict = _judge(retransmissions=60)  # 1.0 %
    assert not verdict.clean
    assert "retransmissions" in verdict.reasons[0]


def test_calls_that_never_finished_count_against_a_step() -> None:
    verdict = _judge(successful=990)
    assert not verdict.clean
    assert verdict.reasons == ("10 calls never finished",)


def test_a_step_that_fell_behind_the_offered_rate_is_not_clean() -> None:
    assert _judge(completed_rate=181).clean
    verdict = _judge(completed_rate=179)
    assert not verdict.clean
    assert "under 90% of offered" in verdict.reasons[0]


def test_every_reason_is_listed() -> None:
    verdict = _judge(successful=500, failed=500, retransmissions=3000, completed_rate=20)
    assert len(verdict.reasons) == 3


def _step(rate: float, clean: bool, **kw: object) -> StepResult:
    step = StepResult(offered_rate=rate, duration_s=5, planned_calls=int(rate * 5), clean=clean)
    for key, value in kw.items():
        setattr(step, key, value)
    return step


def test_highest_clean_rate_stops_at_the_first_unclean_rate() -> None:
    steps = [_step(100, True), _step(200, True), _step(400, False), _step(800, True)]
    assert highest_clean_rate(steps) == 200
    assert highest_clean_rate([_step(100, False)]) is None
    assert highest_clean_rate([]) is None


def test_a_retried_step_that_came_clean_counts() -> None:
    steps = [_step(100, True), _step(200, False), _step(200, True), _step(400, False),
             _step(400, False)]
    assert highest_clean_rate(steps) == 200


def test_summarize_step_from_sipp_statistics() -> None:
    uac = sipp.parse_stat_csv(STAT_TEXT)
    uas = {"FailedCall(C)": "0", "Retransmissions(C)": "5"}
    step = callrate.summarize_step(
        offered_rate=100, duration_s=3, planned=300, uac_stats=uac, uas_stats=uas,
        rtts=[0.0, 1.0, 1.0, 2.0, 40.0], elapsed_s=3.0, proxy_cpu_s=0.6, proxy_processes=1,
        rss_kb_peak=50_000, pss_kb_peak=40_000, loadgen_cpu_s=0.3, host_busy_pct=35.0,
        sends_per_call=6,
    )
    assert step.successful_calls == 298
    assert step.failed_calls == 2
    assert step.retransmissions == 12
    assert step.messages_sent == 300 * 6
    assert step.cpu_ms_per_call == pytest.approx(600 / 298, rel=1e-3)
    assert step.proxy_cpu_pct == 20.0
    assert step.loadgen_cpu_pct == 10.0
    assert step.other_cpu_pct == 5.0
    assert (step.rtt_p50_ms, step.rtt_p99_ms, step.rtt_max_ms) == (1.0, 40.0, 40.0)
    assert not step.clean and step.reasons == ["2 failed calls"]
    assert StepResult.from_json(step.to_json()) == step


# --- report ----------------------------------------------------------------------------------


def _runs() -> dict[str, SystemRun]:
    sb = SystemRun(system={"name": "switchboard", "label": "switchboard (local runtime)",
                           "version": "0.1.0"},
                   idle_rss_kb=40_000, idle_pss_kb=35_000, steps=[
        _step(200, True, cpu_ms_per_call=0.9, rtt_p50_ms=0.0, rtt_p99_ms=4.0,
              pss_kb_peak=45_000, completed_rate=199.0, successful_calls=1000),
        _step(500, True, cpu_ms_per_call=0.8, rtt_p50_ms=1.0, rtt_p99_ms=9.0,
              pss_kb_peak=60_000, completed_rate=498.0, successful_calls=2500),
        _step(1000, False, cpu_ms_per_call=1.1, completed_rate=600.0,
              reasons=["12 failed calls"]),
    ])
    kam = SystemRun(system={"name": "kamailio", "label": "Kamailio (tm + rr + dialog)",
                            "version": "5.6.3"},
                    idle_rss_kb=80_000, idle_pss_kb=30_000, steps=[
        _step(200, True, cpu_ms_per_call=0.3, rtt_p50_ms=0.0, rtt_p99_ms=2.0,
              pss_kb_peak=31_000, completed_rate=199.0),
        _step(500, True, cpu_ms_per_call=0.25, rtt_p50_ms=0.0, rtt_p99_ms=3.0,
              pss_kb_peak=32_000, completed_rate=499.0),
        _step(1000, True, cpu_ms_per_call=0.24, completed_rate=998.0),
        _step(1500, False, reasons=["3 failed calls"]),
    ])
    return {"switchboard": sb, "kamailio": kam}


def test_headline_compares_cpu_at_the_highest_rate_clean_for_both() -> None:
    head = report.headline(_runs())
    assert head["common_rate"] == 500
    assert head["max_clean_rate"]["switchboard"] == 500
    assert head["max_clean_rate"]["kamailio"] == 1000
    assert head["max_clean_rate"]["ratio"] == pytest.approx(0.5)
    assert head["cpu_ms_per_call"]["ratio"] == pytest.approx(0.8 / 0.25)
    assert head["rtt_p99_ms"]["ratio"] == pytest.approx(3.0)
    assert head["targets"] == {"cpu_within_2x_kamailio": False, "clean_rate_1500": False}


def test_headline_without_kamailio_has_no_ratios() -> None:
    runs = {"switchboard": _runs()["switchboard"]}
    head = report.headline(runs)
    assert head["subject_max_clean_rate"] == 500
    assert "cpu_ms_per_call" not in head


def test_ratio_handles_missing_numbers() -> None:
    assert report.ratio(1.0, 2.0) == 0.5
    assert report.ratio(None, 2.0) is None
    assert report.ratio(1.0, 0.0) is None


def _result() -> dict[str, object]:
    plan = suite.Plan("quick", ("switchboard", "kamailio"), (200.0, 500.0, 1000.0, 1500.0),
                      5.0, 0, 0.0, 2)
    return report.build_result(
        started="2026-11-29T16:00:00+00:00", finished="2026-11-29T16:02:00+00:00",
        mode="quick", settings=plan.settings(),
        host={"cpus": 2, "cpu_model": "Test CPU", "kernel": "6.1", "python": "3.11.7",
              "sipp": "3.6.1", "background_busy_pct": 3.0},
        runs=_runs(),
    )


def test_result_json_round_trips(tmp_path: Path) -> None:
    result = _result()
    paths = report.write(result, tmp_path, "20261129-160000", plots=False)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["schema"] == report.SCHEMA
    assert loaded["callrate"]["kamailio"]["max_clean_rate"] == 1000
    assert loaded["callrate"]["switchboard"]["at_max_clean_rate"]["offered_rate"] == 500
    assert loaded["headline"]["common_rate"] == 500
    runs = report.runs_of(loaded)
    assert runs["switchboard"].steps == _runs()["switchboard"].steps
    assert paths["md"].name == "20261129-160000.md"


def test_markdown_summary_shows_headline_and_every_step() -> None:
    text = report.markdown(_result())
    assert "# switchboard bench" in text
    assert "| highest clean rate (calls/s) | 500 | 1000 | 0.50x |" in text
    assert "| proxy CPU ms per call at 500 calls/s | 0.800 | 0.250 | 3.20x |" in text
    assert "within 2x Kamailio's: 3.20x — **not met**" in text
    assert "at least 1,500 clean calls/s: 500 — **not met**" in text
    assert "no: 12 failed calls" in text
    assert "## Call rate — Kamailio (tm + rr + dialog)" in text
    # one table row per step, for both systems
    assert text.count("\n| 200 | 199 |") == 2
    assert "the machine was not quiet" not in text


def test_markdown_warns_when_the_machine_was_busy() -> None:
    result = _result()
    result["host"]["background_busy_pct"] = 80.0  # type: ignore[index]
    assert "the machine was not quiet" in report.markdown(result)


def test_markdown_reports_a_system_that_failed_to_start() -> None:
    runs = {"kamailio": SystemRun(system={"name": "kamailio", "label": "Kamailio"},
                                  error="SystemError_: kamailio is not installed")}
    result = report.build_result(started="t", finished="t", mode="quick", settings={},
                                 host={}, runs=runs)
    text = report.markdown(result)
    assert "**Error:** `SystemError_: kamailio is not installed`" in text
    assert "Highest clean rate: **—" in text


def test_plots_are_written_when_matplotlib_is_there(tmp_path: Path) -> None:
    paths = report.write(_result(), tmp_path, "stamp")
    pngs = sorted(p.name for k, p in paths.items() if k.startswith("png"))
    assert pngs == ["stamp-callrate.png", "stamp-cpu.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![stamp-cpu](stamp-cpu.png)" in paths["md"].read_text()


# --- the plan --------------------------------------------------------------------------------


def test_quick_plan_fits_in_three_minutes() -> None:
    args = suite.parse_args(["--quick"])
    plan, parts = suite.make_plan(args), suite.make_parts_plan(args)
    assert plan.systems == ("switchboard", "kamailio")
    assert plan.worst_case_seconds() + parts.estimate_seconds(suite.PARTS) < 180


def test_full_plan_fits_in_thirty_minutes() -> None:
    args = suite.parse_args([])
    plan, parts = suite.make_plan(args), suite.make_parts_plan(args)
    assert plan.systems == ("switchboard", "switchboard-ray-1", "switchboard-ray-2", "kamailio")
    assert plan.worst_case_seconds() + parts.estimate_seconds(suite.PARTS) < 30 * 60


def test_rates_and_duration_can_be_given() -> None:
    plan = suite.make_plan(suite.parse_args(["--systems", "switchboard", "--rates", "400,200",
                                             "--duration", "20"]))
    assert plan.systems == ("switchboard",)
    assert plan.rates == (200.0, 400.0)
    assert plan.duration == 20.0


def test_unknown_systems_are_refused() -> None:
    with pytest.raises(SystemExit):
        suite.make_plan(suite.parse_args(["--systems", "asterisk"]))


# --- the parts beyond call rate: plans, SIPp sums, the user agents' parser ---------------------


def test_only_picks_parts_in_the_suite_order() -> None:
    assert suite.parse_parts("overload,callrate") == ("callrate", "overload")
    assert suite.parse_parts(",".join(suite.PARTS)) == suite.PARTS
    with pytest.raises(SystemExit):
        suite.parse_parts("soak")


def test_parts_plan_by_mode_and_options() -> None:
    quick = suite.make_parts_plan(suite.parse_args(["--quick"]))
    assert quick.dialog_sizes == (10_000,) and not quick.dialog_settle
    full = suite.make_parts_plan(suite.parse_args([]))
    assert full.dialog_sizes[-1] == 100_000 and full.dialog_settle
    given = suite.make_parts_plan(suite.parse_args(
        ["--quick", "--dialogs", "500,1000", "--dialogs-settle", "--max-rate", "900",
         "--callops-rates", "20,40", "--long-calls", "0"]))
    assert given.dialog_sizes == (500, 1000) and given.dialog_settle
    assert given.max_rate == 900 and given.callops_rates == (20.0, 40.0)
    assert given.callops_long_calls == 0


def test_ray_systems_are_known_by_worker_count() -> None:
    from bench import systems

    assert systems.known_system("switchboard-ray-2") and systems.known_system("switchboard-ray-8")
    assert not systems.known_system("switchboard-ray-0")
    ray = systems.make_system("switchboard-ray-2")
    ray.port = 20000
    assert ray.addresses == [("127.0.0.1", 20000), ("127.0.0.1", 20001)]
    assert "--workers" in ray.command(20000) and "bench._ray_serve" in ray.command(20000)


def test_calls_are_split_evenly_over_load_generators() -> None:
    assert callrate.split_calls(10, 1) == [10]
    assert callrate.split_calls(11, 2) == [6, 5]
    assert callrate.split_calls(2, 4) == [1, 1, 0, 0]


def test_statistics_of_several_sipp_runs_add_up() -> None:
    a = {"SuccessfulCall(C)": "10", "FailedCall(C)": "1", "ResponseTimeinvite(C)": "00:00:00"}
    b = {"SuccessfulCall(C)": "5", "FailedCall(C)": "", "ResponseTimeinvite(C)": "00:00:01"}
    total = sipp.sum_stats([a, {}, b])
    assert sipp.stat_int(total, "SuccessfulCall(C)") == 15
    assert total["ResponseTimeinvite(C)"] == "00:00:00"  # not a count: the first one's
    assert sipp.sum_stats([a]) == a and sipp.sum_stats([]) == {}


def test_kamcmd_answers_are_read() -> None:
    from bench.systems import parse_kamcmd_stats, parse_kamcmd_struct

    stats = parse_kamcmd_stats("dialog:active_dialogs = 50\ndialog:early_dialogs = 0\n")
    assert stats == {"dialog:active_dialogs": 50, "dialog:early_dialogs": 0}
    shm = parse_kamcmd_struct("{\n\ttotal: 268435456\n\treal_used: 2811496\n}\n")
    assert shm["real_used"] == "2811496"


def test_the_user_agents_read_what_the_proxy_sends() -> None:
    from bench import party

    msg = party.parse(
        b"INVITE sip:b@127.0.0.1:5000 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/UDP 127.0.0.1:6000;branch=x\r\n"
        b"Record-Route: <sip:127.0.0.1:5060;lr;x=\"a,b\">\r\n"
        b"From: \"A, B\" <sip:a@127.0.0.1:6000>;tag=abc\r\nTo: <sip:b@127.0.0.1:5000>\r\n"
        b"i: call-1\r\nCSeq: 7 INVITE\r\nContent-Length: 3\r\n\r\nv=0")
    assert msg.method == "INVITE" and msg.call_id == "call-1" and msg.cseq == (7, "INVITE")
    assert len(msg.all("via")) == 2
    assert msg.all("record-route") == ['<sip:127.0.0.1:5060;lr;x="a,b">']
    assert party.tag_of(msg.get("from") or "") == "abc" and party.tag_of("<sip:x>") == ""
    assert party.uri_of('"A, B" <sip:a@h:1>;tag=1') == "sip:a@h:1"
    assert party.user_of("sip:c@127.0.0.1:5") == "c"
    resp = party.parse(b"SIP/2.0 202 Accepted\r\nCSeq: 2 REFER\r\n\r\n")
    assert resp.method is None and resp.status == 202 and resp.body == b""


# --- dialogs held ------------------------------------------------------------------------------


def test_memory_per_dialog_over_idle_and_marginal() -> None:
    from bench import dialogs

    run = dialogs.DialogsRun(system={"name": "switchboard"}, idle_rss_kb=40_000,
                             idle_pss_kb=30_000, idle_shm_used_bytes=None)
    first = dialogs.DialogsPoint(target=10_000, dialogs=10_000, rss_kb=70_000, pss_kb=60_000)
    dialogs.fill_in(first, run, None)
    assert first.pss_delta_kb == 30_000
    assert first.bytes_per_dialog == pytest.approx(3072.0)
    assert first.marginal_bytes_per_dialog is None
    second = dialogs.DialogsPoint(target=20_000, dialogs=20_000, rss_kb=90_000, pss_kb=80_000)
    dialogs.fill_in(second, run, first)
    assert second.marginal_bytes_per_dialog == pytest.approx(2048.0)
    run.points = [first, second]
    assert dialogs.best_estimate(run) == pytest.approx(2048.0)
    assert dialogs.per_dialog(100, 0) is None
    again = dialogs.DialogsRun.from_json(run.to_json())
    assert again.points == run.points


def test_kamailio_shared_memory_per_dialog() -> None:
    from bench import dialogs

    run = dialogs.DialogsRun(system={"name": "kamailio"}, idle_pss_kb=10_000,
                             idle_shm_used_bytes=1_000_000)
    point = dialogs.DialogsPoint(target=1000, dialogs=1000, pss_kb=12_000,
                                 shm_used_bytes=3_000_000)
    dialogs.fill_in(point, run, None)
    assert point.shm_bytes_per_dialog == 2000.0


# --- call operations -----------------------------------------------------------------------------


def test_an_operation_is_timed_to_its_own_request_on_the_wire() -> None:
    from bench.callops import Sample

    hold = Sample("hold", "c1", sent_ns=1_000_000_000)
    hold.arrived("REFER", 1_005_000_000)  # not what a hold sends
    hold.arrived("INVITE", 999_000_000)  # before the command: an older one
    assert hold.wire_ms is None
    hold.arrived("INVITE", 1_001_500_000)
    hold.arrived("INVITE", 1_002_000_000)
    assert hold.wire_ms == pytest.approx(1.5) and hold.second_wire_ms == pytest.approx(2.0)
    transfer = Sample("transfer", "c2", sent_ns=0)
    transfer.arrived("REFER", 3_000_000)
    assert transfer.wire_ms == pytest.approx(3.0)


def test_a_phase_of_operations_sums_up() -> None:
    from bench.callops import Sample, summarize_phase

    samples = [Sample(op, f"c{i}", 0, wire_ms=float(i), reply_ms=float(i) + 0.5)
               for i, op in enumerate(["hold", "unhold", "transfer"] * 34, start=1)]
    samples.append(Sample("hold", "x", 0, error="404 Dialog not found"))
    samples.append(Sample("hold", "y", 0))  # answered, never seen on the wire
    phase = summarize_phase("steady 100/s", samples, 1.04, offered_rate=100, concurrency=1)
    assert phase["ops_sent"] == 104 and phase["ops_ok"] == 103 and phase["ops_failed"] == 1
    assert phase["errors"] == {"404 Dialog not found": 1}
    assert phase["missing_on_wire"] == 1
    assert phase["wire"]["count"] == 102
    assert phase["wire"]["p50_ms"] == 51.0 and phase["wire"]["p99_ms"] == 101.0
    assert phase["by_op"]["transfer"]["count"] == 34
    assert phase["ops_per_s"] == pytest.approx(99.0)


# --- events ----------------------------------------------------------------------------------------


def test_events_delivered_against_expected() -> None:
    from bench.events import EventStep, summarize

    step = summarize(EventStep(offered_rate=500, duration_s=4, calls_ok=2000, received=7990,
                               elapsed_s=4.1))
    assert step.expected == 8000
    assert step.delivered_pct == pytest.approx(99.88)
    assert step.events_per_s == pytest.approx(1948.8)
    assert summarize(EventStep(offered_rate=1, duration_s=1)).delivered_pct is None


# --- overload ------------------------------------------------------------------------------------


def test_shed_calls_are_counted_from_the_scenario_log() -> None:
    from bench.overload import parse_shed_log

    lines = ["shed 2 1040", "shed  1300", "other line", "shed 2 980", ""]
    assert parse_shed_log(lines) == (3, 2, 1300.0)
    assert parse_shed_log([]) == (0, 0, None)


def test_an_overload_step_sums_up() -> None:
    from bench.overload import OverloadStep, summarize

    step = OverloadStep(phase="ramp", offered_rate=2000, duration_s=4, planned_calls=8000,
                        elapsed_s=4.0)
    uac = {"SuccessfulCall(C)": "7900", "FailedCall(C)": "100", "OutgoingCall(C)": "8000",
           "Retransmissions(C)": "10"}
    summarize(step, uac_stats=uac, uas_stats={"FailedCall(C)": "3"},
              shed_lines=["shed 2 100"] * 900, rtts=[1.0, 2.0, 30.0])
    assert step.shed == 900 and step.shed_with_retry_after == 900
    assert step.completed == 7000 and step.completed_rate == 1750.0
    assert step.failed == 103 and step.unfinished == 0
    assert not step.clean and step.reasons[0] == "103 failed"
    assert step.retrans_ratio == pytest.approx(10 / (7000 * 6 + 900 * 2), abs=1e-4)


def test_overload_steps_and_recovery_verdict() -> None:
    from bench.overload import plan_rates, recovery_verdict

    assert plan_rates(1000, (1.0, 2.0), (0.5,)) == [
        ("ramp", 1000.0), ("ramp", 2000.0), ("recovery", 500.0)]
    clean = {"clean": True, "failed": 0, "unfinished": 0, "reasons": [], "last_shed_s": None,
             "duration_s": 4}
    early = {"clean": False, "failed": 0, "unfinished": 0, "reasons": ["12 shed (503)"],
             "last_shed_s": 0.4, "duration_s": 4}
    broken = {**early, "failed": 3, "reasons": ["3 failed", "12 shed (503)"]}
    assert recovery_verdict([clean]) == "clean again"
    assert recovery_verdict([early, clean]) == "clean again after 0.4 s of shedding"
    assert recovery_verdict([broken]) == "**not clean**"
    assert recovery_verdict([]) == "not measured"


# --- soak ------------------------------------------------------------------------------------------


def test_soak_flatness_fits_the_second_half() -> None:
    from bench import soak

    assert soak.slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    assert soak.slope([1], [1]) is None
    flat = [{"t_s": t, "rss_kb": 100 * 1024 + (t % 20)} for t in range(0, 181, 10)]
    verdict = soak.flatness(flat, 180)
    assert verdict["flat"] is True and verdict["samples"] == 10
    leaking = [{"t_s": t, "rss_kb": (100 + t / 5) * 1024} for t in range(0, 181, 10)]
    assert soak.flatness(leaking, 180)["flat"] is False
    assert soak.flatness(flat[:1], 180)["flat"] is None


# --- the report with every part ------------------------------------------------------------------


def _parts() -> dict[str, object]:
    point = {"target": 10_000, "dialogs": 10_000, "transactions": 0, "settled": True,
             "pss_delta_kb": 50_000, "bytes_per_dialog": 5120.0,
             "marginal_bytes_per_dialog": 2900.0, "list_s": 0.2, "list_bytes": 10_000_000,
             "sip_stall_ms": 150.0}
    phase = {"phase": "steady 100/s", "offered_rate": 100, "concurrency": 1, "seconds": 5,
             "ops_sent": 500, "ops_ok": 500, "ops_failed": 0, "errors": {},
             "missing_on_wire": 0, "ops_per_s": 100.0,
             "wire": {"count": 500, "p50_ms": 0.4, "p90_ms": 0.7, "p99_ms": 3.5, "max_ms": 20},
             "reply": {"count": 500, "p50_ms": 0.5, "p90_ms": 0.8, "p99_ms": 3.9,
                       "max_ms": 21},
             "by_op": {"hold": {"p99_ms": 3.0}}}
    ostep = {"phase": "ramp", "offered_rate": 2000.0, "duration_s": 4, "completed_rate": 1500.0,
             "completed": 6000, "shed": 2000, "shed_rate": 500.0, "shed_with_retry_after": 2000,
             "last_shed_s": 3.9, "failed": 0, "unfinished": 0, "retrans_ratio": 0.0,
             "rtt_p50_ms": 5.0, "rtt_p99_ms": 50.0, "proxy_cpu_pct": 95.0,
             "loadgen_cpu_pct": 20.0, "other_cpu_pct": 0.0, "elapsed_s": 4.0, "clean": False,
             "reasons": ["2000 shed (503)"]}
    return {
        "dialogs": {"settings": {"sizes": [10_000], "fill_rate": 1000, "settle": True},
                    "runs": {"switchboard": {"system": {"name": "switchboard"},
                                             "idle_pss_kb": 30_000, "points": [point]}},
                    "heap": {"heap_bytes_per_dialog": 2400.0}},
        "callops": {"settings": {"long_calls": 2000, "background_rate": 200,
                                 "measured_calls": 50}, "background": {}, "phases": [phase]},
        "events": {"settings": {"duration_s": 4}, "steps": []},
        "overload": {"settings": {"max_rate": 1000, "duration_s": 4}, "steps": [ostep],
                     "established": {"calls": 100, "completed": 100, "failed": 0}},
    }


def test_targets_cover_every_number_of_issue_four() -> None:
    result = report.build_result(
        started="s", finished="f", mode="full", settings={}, host={}, runs=_runs(),
        parts=_parts())
    assert result["parts"] == ["callrate", "dialogs", "callops", "events", "overload"]
    t = result["targets"]
    assert t["cpu_within_2x_kamailio"]["met"] is False
    assert t["bytes_per_dialog_3k"]["value"] == 2900.0 and t["bytes_per_dialog_3k"]["met"]
    assert t["bytes_per_dialog_3k"]["core_heap_bytes_per_dialog"] == 2400.0
    assert t["command_to_wire_p99_5ms"] == {"value": 3.5, "target": 5.0, "met": True}


def test_markdown_and_plots_of_every_part(tmp_path: Path) -> None:
    result = report.build_result(
        started="s", finished="f", mode="full", settings={}, host={}, runs=_runs(),
        parts=_parts())
    paths = report.write(result, tmp_path, "stamp")
    text = paths["md"].read_text()
    for heading in ("## All the numbers to beat (issue 4)", "## Dialogs held",
                    "## Call operations under load", "## Events", "## Overload"):
        assert heading in text
    assert "2,900 bytes per held dialog against 3,072 — met" in text
    assert "command-to-wire p99 (worst steady phase): 3.5 ms" in text
    pngs = sorted(p.name for k, p in paths.items() if k.startswith("png"))
    assert pngs == ["stamp-callrate.png", "stamp-cpu.png", "stamp-dialogs.png",
                    "stamp-overload.png"]


def test_parts_alone_make_a_report(tmp_path: Path) -> None:
    result = report.build_result(started="s", finished="f", mode="quick", settings={},
                                 host={}, runs={}, parts={"events": _parts()["events"]})
    assert result["parts"] == ["events"]
    paths = report.write(result, tmp_path, "stamp")
    assert "## Events" in paths["md"].read_text()
    assert not any(k.startswith("png") for k in paths)
