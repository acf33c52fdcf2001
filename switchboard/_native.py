"""Which build runs: the mypyc-compiled modules or their Python source.

`setup.py` compiles two groups with mypyc — the sans-IO SIP core (`switchboard/sip/*.py`)
and the glue every datagram passes through around it (the UDP listener and the worker) —
and writes one digest of every source it compiled. The compiled modules (`*.so`) shadow
the `.py` files on import, so an edited source file would silently lose to an old build;
instead, when the digest no longer matches (or `SWITCHBOARD_PURE=1` asks for it), every
compiled module of both groups is loaded from its source. All or nothing: compiled modules
call each other directly, within a group and from the glue into the core, so a mix would
hold two copies of the same classes.

Pure Python on purpose (never compiled) and imported by `setup.py` as a file, so it uses
the standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "switchboard"
PACKAGE_DIR = Path(__file__).parent
CORE_DIR = PACKAGE_DIR / "sip"
# The digest of every compiled source, written by the build (kept beside the core, where
# the package data and .gitignore expect it).
STAMP = CORE_DIR / "_native.sha256"
# mypyc's names for the libraries the compiled modules share (`<group>__mypyc.<suffix>`, at
# the top of the install, beside the package): the core's, and the glue's, which calls into
# the core's.
GROUP = "switchboard_core"
GLUE_GROUP = "switchboard_glue"
# The glue: the modules between a datagram and the core, per message, in the package.
GLUE = ("transport/udp.py", "actors/worker.py", "cluster/owner.py", "transport/handoff.py",
        "cluster/shared_port.py")


def pure_requested() -> bool:
    return os.environ.get("SWITCHBOARD_PURE", "") not in ("", "0")


def core_sources() -> list[Path]:
    """The core's modules (the package `__init__` only re-exports)."""
    return sorted(p for p in CORE_DIR.glob("*.py") if p.name != "__init__.py")


def glue_sources() -> list[Path]:
    return [PACKAGE_DIR / name for name in GLUE]


def groups() -> list[tuple[list[Path], str]]:
    """What gets compiled: each group's sources and the name of the library they share."""
    return [(core_sources(), GROUP), (glue_sources(), GLUE_GROUP)]


def compiled_sources() -> list[Path]:
    return [path for sources, _ in groups() for path in sources]


def module_name(source: Path) -> str:
    return ".".join((PACKAGE, *source.relative_to(PACKAGE_DIR).with_suffix("").parts))


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in compiled_sources():
        name = path.relative_to(PACKAGE_DIR).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_stamp() -> None:
    STAMP.write_text(source_digest() + "\n")


def _is_extension(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def built_files(project: Path) -> list[Path]:
    """What an in-place build leaves in the source tree: the compiled modules beside their
    sources (the whole core directory's, so a module since removed goes too) and the
    libraries they share (at the top of `project`)."""
    found = [p for p in CORE_DIR.iterdir() if _is_extension(p)]
    for source in glue_sources():
        found += [p for p in source.parent.glob(source.stem + ".*") if _is_extension(p)]
    for _, group in groups():
        found += [p for p in project.glob(f"{group}__mypyc*") if _is_extension(p)]
    return found


def _has_extensions() -> bool:
    return any(source.with_suffix(suffix).exists()
               for source in compiled_sources()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def choose() -> tuple[bool, str]:
    """(compiled?, why): decide once, before anything imports a compiled module."""
    if not _has_extensions():
        return False, "not compiled (SWITCHBOARD_PURE=1 install, or no build yet)"
    if pure_requested():
        reason = "SWITCHBOARD_PURE=1"
    else:
        try:
            built = STAMP.read_text().strip()
        except OSError:
            built = ""
        if built == source_digest():
            return True, "compiled with mypyc"
        reason = "the compiled core is older than its source: reinstall (pip install -e .)"
        warnings.warn(f"switchboard: running the SIP core from source, {reason}",
                      RuntimeWarning, stacklevel=3)
    sys.meta_path.insert(0, _SourceFirst({module_name(p): p for p in compiled_sources()}))
    return False, reason


class _SourceFirst:
    """A meta path finder that loads the compiled modules from `.py` even where a compiled
    module of the same name sits beside the source."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        if source is None or not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)
