"""Writing a configuration back as TOML, from the schema: `dump_config` (what
`check-config --print` shows: every key of a `Config`, secrets hidden) and `reference` (every
key with its default and its comment: the block README.md and docs/operations.md show).
"""

from __future__ import annotations

import textwrap
from typing import Any, Final

from .kinds import Setting, Tables, settings
from .schema import Config

# The reference's comments start in this column, and its lines end before this width.
COMMENT_COLUMN: Final = 34
WIDTH: Final = 94


def dump_config(config: Config, *, show_secrets: bool = False) -> str:
    """`config` as TOML that `parse_config` reads back to an equal `Config`, every key
    written (defaults included). A set secret (`mi.token`, `proxy.route_secret`, the
    passwords of `auth.users`) is written as a placeholder unless `show_secrets`."""
    lines: list[str] = []
    for name, section in _sections(config):
        lines.append(f"[{name}]")
        tables: list[str] = []
        for key, value, setting in _keys(section):
            if isinstance(setting.kind, Tables):
                for item in value:
                    tables += ["", f"[[{name}.{key}]]"]
                    tables += [f"{k} = {s.kind.toml(v)}" for k, v, s in _keys(item)]
            elif setting.secret and value and not show_secrets:
                lines.append(f"{key} = {setting.kind.hidden(value)}")
            else:
                lines.append(f"{key} = {setting.kind.toml(value)}")
        lines += [*tables, ""]
    return "\n".join(lines)


def reference() -> str:
    """Every key with its default and what it means, as a commented TOML file; an array of
    tables is shown as a commented-out example."""
    lines: list[str] = []
    for name, section in _sections(Config()):
        lines.append(f"[{name}]")
        for key, value, setting in _keys(section):
            if isinstance(setting.kind, Tables):
                lines += _commented(f"# [[{name}.{key}]]", setting.doc)
                for f, inner in settings(setting.kind.table.cls):
                    lines += _commented(
                        f"# {f.name} = {inner.kind.toml(inner.example)}", inner.doc
                    )
            else:
                lines += _commented(f"{key} = {setting.kind.toml(value)}", setting.doc)
    return "\n".join(lines) + "\n"


def _sections(config: Config) -> list[tuple[str, Any]]:
    return [(f.name, getattr(config, f.name)) for f, _ in settings(config)]


def _keys(table: Any) -> list[tuple[str, Any, Setting[Any]]]:
    return [(f.name, getattr(table, f.name), s) for f, s in settings(table)]


def _commented(code: str, doc: str) -> list[str]:
    if not doc:
        return [code]
    return textwrap.wrap(
        doc,
        WIDTH,
        initial_indent=code.ljust(COMMENT_COLUMN - 2) + "  # ",
        subsequent_indent=" " * COMMENT_COLUMN + "# ",
        break_long_words=False,
        break_on_hyphens=False,
    )
