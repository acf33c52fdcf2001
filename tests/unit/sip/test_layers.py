"""`switchboard/sip/` is a stack with one direction: each module imports only modules of
lower layers — never one of its own layer or above, not even under `TYPE_CHECKING` or inside
a function. Parse, transactions, dialogs, the proxy, and call operations on top of it (h11 and
aioquic read this way). A new module must be given a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

SIP = Path(__file__).resolve().parents[3] / "switchboard" / "sip"

# Lowest first. The package's __init__ is its facade and may re-export anything.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"memo"}),
    frozenset({"errors", "wire", "timers", "events", "auth", "guard"}),
    frozenset({"uri", "sdp", "states"}),
    frozenset({"headers", "refer"}),
    frozenset({"message", "operations"}),
    frozenset({"framing", "registrar", "transaction", "addressing"}),
    frozenset({"dialog", "policy"}),
    frozenset({"replication", "stats"}),
    frozenset({"uac"}),
    frozenset({"proxy"}),
    frozenset({"callops"}),
    frozenset({"routing"}),
)


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"switchboard/sip/{name}.py has no layer in LAYERS")


def sip_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of another switchboard.sip module in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("switchboard.sip."):
                names = [node.module.split(".")[2]]
            else:
                continue
            found += [(node.lineno, name.split(".")[0]) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[2]) for a in node.names
                      if a.name.startswith("switchboard.sip.")]
    return found


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in SIP.glob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS)


def test_imports_go_down_the_stack_only() -> None:
    wrong = []
    for path in sorted(SIP.glob("*.py")):
        if path.stem == "__init__":
            continue
        mine = layer_of(path.stem)
        for line, name in sip_imports(path):
            if layer_of(name) >= mine:
                wrong.append(f"switchboard/sip/{path.name}:{line} imports {name} "
                             f"(layer {layer_of(name)}, not below {mine})")
    assert not wrong, "\n".join(wrong)
