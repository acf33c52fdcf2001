"""Build step: compile the sans-IO SIP core and the glue around it to C with mypyc.

Everything else about the package is in pyproject.toml. The core (`switchboard/sip`) is
plain, strictly typed Python and stays importable as such; mypyc turns the same source into
C extension modules that run it 2-2.5x faster (bench/README.md, "The core alone"). A second
group, the per-datagram glue around it (`transport/udp.py`, `actors/worker.py`, and the
hand-off between workers that share an address: `cluster/owner.py`, `cluster/shared_port.py`,
`transport/handoff.py`), is compiled beside it and calls into it directly. The compiled
modules are used only when they were built from the source files next to them
(switchboard/_native.py checks a digest written here); otherwise, or with
SWITCHBOARD_PURE=1, the Python source runs.

    SWITCHBOARD_PURE=1 pip install -e .   # no compiler at hand: install without compiling
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).parent / "switchboard"))
import _native  # the digest rule, shared with the runtime check

HERE = Path(__file__).parent

ext_modules = []
if not _native.pure_requested():
    from mypyc.build import mypycify

    # Paths relative to the project, whichever way `__file__` was given (a build backend
    # may give it relative, the import system gives `_native`'s absolute).
    groups = [([os.path.relpath(path, HERE) for path in sources], name)
              for sources, name in _native.groups()]
    # No incremental state kept between builds: mypyc's own (separate groups are built
    # incrementally) failed with an internal error after a source changed, whether it
    # shared `.mypy_cache` with `mypy --strict` or not. Every build starts afresh.
    cache = HERE / "build" / "mypyc-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["MYPY_CACHE_DIR"] = str(cache)
    # One mypyc run over both groups, each its own library: the glue's calls into the core
    # stay native calls across the two.
    ext_modules = mypycify([path for sources, _ in groups for path in sources],
                           opt_level="3", separate=groups)
    # Only once the C is made: a build that fails here must not claim the sources.
    _native.write_stamp()
else:
    # A source install: what an earlier build left in place must not shadow the source.
    for old in [_native.STAMP, *_native.built_files(HERE)]:
        if old.exists():
            old.unlink()

setup(ext_modules=ext_modules)
