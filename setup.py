"""Build step: compile the sans-IO SIP core (`switchboard/sip`) to C with mypyc.

Everything else about the package is in pyproject.toml. The core is plain, strictly typed
Python and stays importable as such; mypyc turns the same source into C extension modules
that run it 2-2.5x faster (bench/README.md, "The core alone"). The compiled modules are
used only when they were built from the source files next to them (switchboard/_native.py
checks a digest written here); otherwise, or with SWITCHBOARD_PURE=1, the Python source runs.

    SWITCHBOARD_PURE=1 pip install -e .   # no compiler at hand: install without compiling
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).parent / "switchboard"))
import _native  # the digest rule, shared with the runtime check

ext_modules = []
if not _native.pure_requested():
    from mypyc.build import mypycify

    _native.write_stamp()
    core = [str(path.relative_to(Path(__file__).parent)) for path in _native.core_sources()]
    ext_modules = mypycify(core, opt_level="3", group_name=_native.GROUP)
else:
    # A source install: what an earlier build left in place must not shadow the source.
    for old in [_native.STAMP, *_native.built_files(Path(__file__).parent)]:
        if old.exists():
            old.unlink()

setup(ext_modules=ext_modules)
