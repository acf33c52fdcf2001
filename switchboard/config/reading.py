"""Reading a configuration file: TOML (stdlib `tomllib`) into a `Config`, the schema's kinds
checking each value, and every refusal turned into a `ConfigError` that names the key and the
line where the file has it.

Only shapes and values are checked here: no socket is opened and no file other than the
configuration itself is looked for.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from .kinds import ConfigError, Invalid, Table, dotted
from .schema import Config

_CONFIG = Table(Config)


def parse_config(text: str, *, source: str | None = None) -> Config:
    """Build a `Config` from TOML text; `source` names the file in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", source=source) from None
    try:
        return _CONFIG.read(document, ())
    except Invalid as exc:
        # A missing key has no line of its own: point at its table.
        where = exc.path[:-1] if exc.missing else exc.path
        line = _find_line(text, where)
        raise ConfigError(dotted(exc.path), exc.problem, source=source, line=line) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML file at `path`; the defaults when `path` is None."""
    if path is None:
        return Config()
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"cannot read: {exc}", source=source) from None
    return parse_config(text, source=source)


def _find_line(text: str, path: Sequence[str | int]) -> int | None:
    """Best effort: the line of `path` in the TOML text, for `[table]`, `[[array]]` and
    `key = value` layouts (not inline tables or dotted keys). None when not found."""
    names = [p for p in path if isinstance(p, str)]
    # Only one array of tables exists (events.subscribe), so one index is enough.
    wanted = next((p for p in path if isinstance(p, int)), None)
    header: list[str] = []
    element: int | None = None
    seen: dict[tuple[str, ...], int] = {}
    table_line: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(raw)
        if m:
            array, table = m.group(1), m.group(2)
            header = [part.strip().strip("\"'") for part in (array or table).split(".")]
            element = None
            if array:
                element = seen[tuple(header)] = seen.get(tuple(header), -1) + 1
            if header == names and _same_element(element, wanted) and table_line is None:
                table_line = number
            continue
        if (
            len(names) > len(header)
            and names[: len(header)] == header
            and _same_element(element, wanted)
            and re.match(rf"\s*[\"']?{re.escape(names[len(header)])}[\"']?\s*=", raw)
        ):
            return number
    return table_line


_HEADER = re.compile(r"\s*(?:\[\[\s*([^\]]+?)\s*\]\]|\[\s*([^\]]+?)\s*\])")


def _same_element(element: int | None, wanted: int | None) -> bool:
    return element is None or wanted is None or element == wanted
