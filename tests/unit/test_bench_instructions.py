"""bench/instructions.py's reading of `callgrind_annotate --inclusive=yes` output (the lines
as callgrind 3.19 writes them), and the per-call difference of two runs."""

from __future__ import annotations

from bench.instructions import counts, per_call

GLUE = "/work/main/build/__native_switchboard_glue.c"
SO = "[/work/main/switchboard_glue__mypyc.cpython-311-x86_64-linux-gnu.so]"


def _annotated(total: str, listener: str, timers: str) -> str:
    return "\n".join([
        "Events shown:     Ir",
        "--------------------------------------------------------------------------------",
        f"{total} (100.0%)  PROGRAM TOTALS",
        "",
        # The Python-level wrapper, then the native function: the native one is read.
        f"   999 (12.26%)  {GLUE}:CPyPy_switchboard___transport___udp___UdpEndpoint___"
        f"datagram_received {SO}",
        f"   {listener} (12.25%)  {GLUE}:CPyDef_switchboard___transport___udp___"
        f"UdpEndpoint___datagram_received {SO}",
        # A call edge naming the same function is not its count.
        f"   5 (0.00%)  =>   {GLUE}:CPyDef_switchboard___actors___worker___Worker____on_timer"
        f" (3x) {SO}",
        f"   {timers} ( 0.22%)  {GLUE}:CPyDef_switchboard___actors___worker___Worker____on_timer"
        f" {SO}",
    ])


def test_counts_reads_the_total_and_each_native_function() -> None:
    found = counts(_annotated("2,354,930,805", "288,435,799", "5,142,662"))
    assert found == {"total": 2_354_930_805, "listener": 288_435_799, "timers": 5_142_662}


def test_per_call_is_the_difference_over_the_extra_calls() -> None:
    more = counts(_annotated("3,837,659,467", "1,234,455,799", "165,618,662"))
    fewer = counts(_annotated("2,354,930,805", "288,435,799", "5,142,662"))
    got = per_call(more, fewer, 1000)
    assert round(got["total"]) == 1_482_729
    assert round(got["listener"]) == 946_020
    assert round(got["timers"]) == 160_476


def test_a_count_missing_from_one_run_is_left_out() -> None:
    assert per_call({"total": 10, "listener": 5}, {"total": 4}, 2) == {"total": 3.0}
