"""Which build of the SIP core runs: the mypyc-compiled modules or their Python source.

`setup.py` compiles `switchboard/sip/*.py` with mypyc and writes the digest of the sources
it compiled next to them. The compiled modules (`*.so`) shadow the `.py` files on import, so
an edited source file would silently lose to an old build; instead, when the digest no
longer matches (or `SWITCHBOARD_PURE=1` asks for it), every `switchboard.sip` module is
loaded from its source. All or nothing: compiled modules call each other directly, so a mix
would hold two copies of the same classes.

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

CORE_PACKAGE = "switchboard.sip"
CORE_DIR = Path(__file__).parent / "sip"
STAMP = CORE_DIR / "_native.sha256"
# mypyc's name for the library the compiled modules share (`<GROUP>__mypyc.<suffix>`, at the
# top of the install, beside the package).
GROUP = "switchboard_core"


def pure_requested() -> bool:
    return os.environ.get("SWITCHBOARD_PURE", "") not in ("", "0")


def core_sources() -> list[Path]:
    """What gets compiled: the core's modules (the package `__init__` only re-exports)."""
    return sorted(p for p in CORE_DIR.glob("*.py") if p.name != "__init__.py")


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in core_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_stamp() -> None:
    STAMP.write_text(source_digest() + "\n")


def _is_extension(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def built_files(project: Path) -> list[Path]:
    """What an in-place build leaves in the source tree: the core's extension modules and
    the library they share (at the top of `project`)."""
    return ([p for p in CORE_DIR.iterdir() if _is_extension(p)]
            + [p for p in project.glob(f"{GROUP}__mypyc*") if _is_extension(p)])


def _has_extensions() -> bool:
    return any(_is_extension(path) for path in CORE_DIR.iterdir())


def choose() -> tuple[bool, str]:
    """(compiled?, why): decide once, before anything imports the core."""
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
    sys.meta_path.insert(0, _SourceFirst())
    return False, reason


class _SourceFirst:
    """A meta path finder that loads `switchboard.sip.*` from `.py` even where a compiled
    module of the same name sits beside it."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(CORE_PACKAGE + "."):
            return None
        source = CORE_DIR / (fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)
