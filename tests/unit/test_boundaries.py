"""The package boundaries of DESIGN.md section 2, checked on the source with `ast`.

- `switchboard/sip/` is sans-IO: it imports no I/O, clock, concurrency or cluster module
  (asyncio, socket, selectors, threading, time, uvloop, ray) and nothing from switchboard outside
  `switchboard.sip`.
- Only `switchboard/cluster/ray*` (a module `ray*.py` or a package `ray*/`) imports `ray`.
- The test kit: no module of tests/ or bench/ imports a test module (`test_*.py`) or a conftest
  (what tests share lives in tests/support/ and tests/unit/kit/), and every import of the tests'
  own modules goes through the one import root, `tests.` (never `unit.…`, `interop.…` or a
  module of tests/ by its bare name).

Every import statement counts, wherever it sits (function bodies, `if TYPE_CHECKING:` blocks,
try/except), and so do `importlib.import_module("...")` / `__import__("...")` calls with a
literal name. A failure lists every offending file:line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "switchboard"

SIP_FORBIDDEN = frozenset({"asyncio", "socket", "ray", "uvloop", "time", "selectors", "threading"})


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # absolute dotted name, e.g. "switchboard.actors.dialog" or "asyncio"

    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    """Dotted module name of a file under the package, e.g. switchboard.sip.uri."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve_relative(path: Path, level: int, module: str | None) -> str:
    """Absolute name for `from <level dots><module> import ...` inside `path`."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()  # a module's relative imports start from its package
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def imports_of(path: Path) -> list[Import]:
    """Every import in `path`, in line order."""
    return sorted(_imports_of(path), key=lambda imp: imp.line)


def _imports_of(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = resolve_relative(path, node.level, node.module)
            else:
                base = node.module or ""
            if base == "switchboard":
                # `from switchboard import actors` / `from .. import config`: the names are
                # what is imported (most likely subpackages); the package itself always is.
                for alias in node.names:
                    yield Import(path, node.lineno, f"{base}.{alias.name}")
            else:
                yield Import(path, node.lineno, base)
        elif (
            isinstance(node, ast.Call)
            and _is_dynamic_import(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(path, node.lineno, node.args[0].value)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return False


def top(module: str) -> str:
    return module.split(".", 1)[0]


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def is_sip(path: Path) -> bool:
    return is_within(module_name(path), "switchboard.sip")


def is_ray_runtime(path: Path) -> bool:
    """switchboard/cluster/ray*.py or anything under switchboard/cluster/ray*/."""
    rel = path.relative_to(PACKAGE_DIR).parts
    return len(rel) >= 2 and rel[0] == "cluster" and rel[1].startswith("ray")


def sip_violations(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        if not is_sip(path):
            continue
        for imp in imports_of(path):
            if top(imp.module) in SIP_FORBIDDEN:
                out.append(f"{imp.where()}: imports {imp.module} (sip/ is sans-IO)")
            elif top(imp.module) == "switchboard" and not is_within(imp.module, "switchboard.sip"):
                out.append(f"{imp.where()}: imports {imp.module} (sip/ imports only sip/)")
    return out


def ray_violations(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        if is_ray_runtime(path):
            continue
        for imp in imports_of(path):
            if top(imp.module) == "ray":
                out.append(
                    f"{imp.where()}: imports {imp.module} (only switchboard/cluster/ray* may)"
                )
    return out


def test_package_parses() -> None:
    """Every file must parse, or the boundary checks below would silently skip it."""
    errors = []
    for path in package_files():
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as exc:
            errors.append(f"{path.relative_to(REPO_ROOT)}:{exc.lineno}: {exc.msg}")
    assert not errors, "files that do not parse:\n" + "\n".join(errors)


def test_sip_is_sans_io() -> None:
    files = package_files()
    if not any(is_sip(p) for p in files):
        pytest.skip("switchboard/sip/ does not exist yet")
    violations = sip_violations(files)
    assert not violations, "sans-IO boundary crossed:\n" + "\n".join(violations)


def test_only_ray_runtime_imports_ray() -> None:
    violations = ray_violations(package_files())
    assert not violations, "ray imported outside switchboard/cluster/ray*:\n" + "\n".join(
        violations
    )


# -- the checker itself, on a throwaway tree -------------------------------------------------


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_checker_catches_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "switchboard"
    # The helpers read these module globals; point them at the throwaway tree.
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE_DIR", pkg)
    _write(tmp_path, "switchboard/__init__.py", "")
    _write(tmp_path, "switchboard/sip/__init__.py", "from . import uri\n")
    _write(tmp_path, "switchboard/sip/uri.py", "import re\nfrom .message import Message\n")
    _write(
        tmp_path,
        "switchboard/sip/transaction.py",
        "import time\n"
        "from asyncio import Future\n"
        "def f():\n"
        "    import socket\n"
        "from ..actors import dialog\n"
        "from switchboard.transport import udp\n"
        "from switchboard.sip.uri import Uri\n"
        "import importlib\n"
        "importlib.import_module('threading')\n",
    )
    _write(tmp_path, "switchboard/sip/message.py", "from .. import config\n")
    _write(tmp_path, "switchboard/actors/dialog.py", "import ray\nimport asyncio\n")
    _write(tmp_path, "switchboard/cluster/ray_runtime/controller.py", "import ray\n")
    _write(tmp_path, "switchboard/cluster/ray/__init__.py", "from ray import serve\n")
    _write(tmp_path, "switchboard/cluster/local.py", "from ray.util import queue\n")

    files = package_files()
    sip = sip_violations(files)
    assert sip == [
        "switchboard/sip/message.py:1: imports switchboard.config (sip/ imports only sip/)",
        "switchboard/sip/transaction.py:1: imports time (sip/ is sans-IO)",
        "switchboard/sip/transaction.py:2: imports asyncio (sip/ is sans-IO)",
        "switchboard/sip/transaction.py:4: imports socket (sip/ is sans-IO)",
        "switchboard/sip/transaction.py:5: imports switchboard.actors (sip/ imports only sip/)",
        "switchboard/sip/transaction.py:6: imports switchboard.transport (sip/ imports only sip/)",
        "switchboard/sip/transaction.py:9: imports threading (sip/ is sans-IO)",
    ]
    ray = ray_violations(files)
    assert ray == [
        "switchboard/actors/dialog.py:1: imports ray (only switchboard/cluster/ray* may)",
        "switchboard/cluster/local.py:1: imports ray.util (only switchboard/cluster/ray* may)",
    ]


# -- the test kit: test modules import helpers, never each other -----------------------------


def kit_files() -> list[Path]:
    """Every Python file of the test suites and of the bench."""
    return sorted(
        p
        for folder in ("tests", "bench")
        for p in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def imported_names(path: Path) -> dict[int, list[str]]:
    """By line, the modules `path` may load there: what `imports_of` finds, and for
    `from m import x` also `m.x` (x may be a module: `from tests.unit.sip import test_proxy`)."""
    names: dict[int, list[str]] = {}
    for imp in imports_of(path):
        names.setdefault(imp.line, []).append(imp.module)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = resolve_relative(path, node.level, node.module) if node.level else node.module
            names.setdefault(node.lineno, []).extend(f"{base}.{a.name}" for a in node.names)
    return names


def enclosing_test_module(module: str) -> str | None:
    """The test module or conftest that `module` is or lies in, or None."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_") or part == "conftest":
            return ".".join(parts[: i + 1])
    return None


def kit_violations(files: list[Path]) -> list[str]:
    tests = REPO_ROOT / "tests"
    # What only imports with tests/ itself on sys.path: the names of its entries.
    roots = {p.stem for p in tests.iterdir() if p.suffix == ".py" or p.is_dir()} - {"__pycache__"}
    out = []
    for path in files:
        for line, names in sorted(imported_names(path).items()):
            where = f"{path.relative_to(REPO_ROOT)}:{line}"
            rooted = sorted((n for n in names if top(n) in roots), key=len)
            if rooted:
                out.append(f"{where}: imports {rooted[0]} (one import root: tests.{rooted[0]})")
            for module in sorted({m for m in map(enclosing_test_module, names) if m is not None}):
                if module.endswith("conftest"):
                    out.append(f"{where}: imports {module} (a conftest: helpers live in "
                               "tests/support/, fixtures reach a test by name)")
                else:
                    out.append(f"{where}: imports {module} (a test module: what tests share "
                               "lives in tests/support/ or tests/unit/kit/)")
    return out


def test_test_modules_import_the_kit_not_each_other() -> None:
    violations = kit_violations(kit_files())
    assert not violations, "the test kit's import rule broken:\n" + "\n".join(violations)


def test_kit_checker_catches_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    _write(tmp_path, "tests/conftest.py", "from tests.support.server import start_switchboard\n")
    _write(tmp_path, "tests/harness.py", "")
    _write(tmp_path, "tests/support/sipp.py", "from tests.support.ports import free_port\n")
    _write(tmp_path, "tests/unit/kit/proxy.py", "from switchboard.sip import parse_message\n")
    _write(tmp_path, "tests/unit/sip/test_proxy.py", "from tests.unit.kit.proxy import Net\n")
    _write(
        tmp_path,
        "tests/unit/sip/test_auth.py",
        "from unit.sip.test_proxy import invite\n"
        "from tests.unit.sip import test_proxy\n"
        "from tests.interop.conftest import PeerFactory\n"
        "import harness\n"
        "from .test_proxy import Net\n"
        "from . import helpers\n"
        "def f():\n"
        "    importlib.import_module('tests.integration.test_ops_http')\n",
    )
    _write(tmp_path, "bench/loss.py", "from tests.interop.test_sipp_callops import received\n")
    _write(tmp_path, "switchboard/api.py", "from tests.unit.sip.test_proxy import Net\n")

    assert kit_violations(kit_files()) == [
        "bench/loss.py:1: imports tests.interop.test_sipp_callops (a test module: what tests "
        "share lives in tests/support/ or tests/unit/kit/)",
        "tests/unit/sip/test_auth.py:1: imports unit.sip.test_proxy (one import root: "
        "tests.unit.sip.test_proxy)",
        "tests/unit/sip/test_auth.py:1: imports unit.sip.test_proxy (a test module: what tests "
        "share lives in tests/support/ or tests/unit/kit/)",
        "tests/unit/sip/test_auth.py:2: imports tests.unit.sip.test_proxy (a test module: what "
        "tests share lives in tests/support/ or tests/unit/kit/)",
        "tests/unit/sip/test_auth.py:3: imports tests.interop.conftest (a conftest: helpers live "
        "in tests/support/, fixtures reach a test by name)",
        "tests/unit/sip/test_auth.py:4: imports harness (one import root: tests.harness)",
        "tests/unit/sip/test_auth.py:5: imports tests.unit.sip.test_proxy (a test module: what "
        "tests share lives in tests/support/ or tests/unit/kit/)",
        "tests/unit/sip/test_auth.py:8: imports tests.integration.test_ops_http (a test module: "
        "what tests share lives in tests/support/ or tests/unit/kit/)",
    ]
