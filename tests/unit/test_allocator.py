"""What `serve` sets to start itself again on mimalloc, and how it tells what it runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard import allocator


def test_the_environment_preloads_the_library_before_any_other_preload() -> None:
    env = allocator.environment("libmimalloc.so.2", {"LD_PRELOAD": "libfoo.so", "HOME": "/x"})
    assert env["LD_PRELOAD"] == "libmimalloc.so.2 libfoo.so"
    assert env["PYTHONMALLOC"] == "malloc"
    assert env["MIMALLOC_RESET_DELAY"] == "0"
    assert env[allocator.MARK] == "mimalloc"
    assert env["HOME"] == "/x"
    assert allocator.environment("libmimalloc.so.2", {})["LD_PRELOAD"] == "libmimalloc.so.2"


def test_python_or_a_second_start_returns_without_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exec(*_: object) -> None:
        raise AssertionError("exec")

    monkeypatch.setattr(allocator.os, "execve", no_exec)
    allocator.run_on("python")
    monkeypatch.setenv(allocator.MARK, "mimalloc")
    allocator.run_on("mimalloc")


def test_a_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.MARK, raising=False)
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: None)
    with pytest.raises(allocator.AllocatorMissing, match=r"libmimalloc2\.0"):
        allocator.run_on("mimalloc")


def test_what_runs_is_read_from_the_process(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libmimalloc.so.2.0\n")
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    assert allocator.active(maps) == "python"
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    assert allocator.active(maps) == "mimalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.active(maps) == "malloc"


def test_free_memory_is_given_back_through_what_the_process_has() -> None:
    found = allocator._releasers()
    if allocator.active() == "python":  # glibc's malloc_trim (CPython's arenas go alone)
        assert len(found) == 1
    allocator.give_back()
    allocator.give_back()  # found once, then kept
    assert allocator._release is not None and len(allocator._release) == len(found)
