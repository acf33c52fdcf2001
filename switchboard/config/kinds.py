"""What a configuration key is besides its name and default: its kind of value (how the value
is read from the TOML file or from a `serve` flag, and written back as TOML), the comment the
reference shows for it, the flag that overrides it, and whether it is a secret.

`schema.py` declares each key as a dataclass field with `metadata=setting(...)`; parsing, flag
overrides, `dump_config` and the reference all read the declarations back with `settings()`.
A kind that refuses a value raises `Invalid` with the path to the bad part
(`("listen", "sockets", 0)`); the file reader adds the line, `apply_overrides` names the flag.
This module knows no key: only how keys are read and written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")
_D = TypeVar("_D", bound="DataclassInstance")

Path = tuple[str | int, ...]

# Where a field's `Setting` lives in its dataclass metadata.
SETTING: Final = "switchboard.config.setting"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or wrong. `key` is dotted (`mi.http`), or
    the flag (`--listen`) when a `serve` flag is wrong."""

    def __init__(
        self, key: str, problem: str, *, source: str | None = None, line: int | None = None
    ) -> None:
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(f"{where}{key}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source
        self.line = line


class Invalid(ValueError):
    """A value a kind refuses. `path` leads from the top of the file to the bad part;
    `missing` says the last step names a key absent from its table (which has a line, the key
    has none)."""

    def __init__(self, problem: str, path: Path, *, missing: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.missing = missing


def dotted(path: Sequence[str | int]) -> str:
    """`("events", "subscribe", 1, "socket")` → `events.subscribe[1].socket`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_KINDS: Final = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
                 list: "an array", dict: "a table"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string (the same escapes).
    return json.dumps(text, ensure_ascii=False)


# --- the metadata ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flag:
    """The `serve` flag that overrides a key: a flag that is given replaces the file's value
    (a repeated one the whole list)."""

    name: str  # "--mi-http"
    help: str
    metavar: str | None = None

    @property
    def param(self) -> str:
        """The keyword `apply_overrides` and the click command take: `--mi-http` → `mi_http`."""
        return self.name.removeprefix("--").replace("-", "_")


@dataclass(frozen=True, slots=True)
class Setting(Generic[_T]):
    """A key's declaration beside its dataclass field (which holds the name and default)."""

    kind: Kind[_T]
    doc: str  # the comment on the key in the reference
    flag: Flag | None = None
    secret: bool = False  # `dump_config` shows a set value as "<hidden>"
    example: _T | None = None  # a key without default: the value the reference shows


def setting(kind: Kind[_T], doc: str, *, flag: Flag | None = None, secret: bool = False,
            example: _T | None = None) -> dict[str, Setting[_T]]:
    """The metadata that declares a key: `field(default=..., metadata=setting(...))`."""
    return {SETTING: Setting(kind, doc, flag, secret, example)}


def settings(table: type[DataclassInstance] | DataclassInstance) -> list[
        tuple[dataclasses.Field[Any], Setting[Any]]]:
    """Each field of a table (a dataclass or one of its instances) with its `Setting`, in
    declaration order. A field declared without one holds a table of its own: the dataclass
    its `default_factory` makes (a section of the file)."""
    out: list[tuple[dataclasses.Field[Any], Setting[Any]]] = []
    for f in dataclasses.fields(table):
        if SETTING in f.metadata:
            out.append((f, f.metadata[SETTING]))
            continue
        factory: object = f.default_factory
        if not (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
            raise TypeError(f"{f.name}: neither a setting nor a table")
        out.append((f, Setting(Table(factory), "")))
    return out


# --- the kinds ---------------------------------------------------------------------------------


class Kind(Generic[_T]):
    """How one kind of value is read and written."""

    # A flag for it is given once per item and gives the whole list.
    repeated: ClassVar[bool] = False

    def read(self, value: object, path: Path) -> _T:
        """The value from what `tomllib` read at `path`; raises `Invalid`."""
        raise NotImplementedError

    def from_flag(self, value: object) -> _T:
        """The value from what click gave for the flag; raises `Invalid`."""
        return self.read(value, ())

    def toml(self, value: _T) -> str:
        """The value as TOML text (tables are written by `writing.py`, not here)."""
        raise NotImplementedError

    def hidden(self, value: _T) -> str:
        """What a set secret is written as."""
        return '"<hidden>"  # set, not shown'


class Text(Kind[_T]):
    """A string, turned into the value by `parse` (a `ValueError` says what is wrong) and
    written back from `show(value)`."""

    def __init__(self, parse: Callable[[str], _T], show: Callable[[_T], str] = str) -> None:
        self.parse = parse
        self.show = show

    def read(self, value: object, path: Path) -> _T:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, not {_kind(value)}", path)
        try:
            return self.parse(value)
        except ValueError as exc:
            raise Invalid(str(exc), path) from None

    def toml(self, value: _T) -> str:
        return _string(self.show(value))


class Choice(Text[_T]):
    """One of `choices`, compared in lower case with `fold_case`."""

    def __init__(self, choices: Sequence[_T], *, fold_case: bool = False) -> None:
        self.choices = tuple(choices)
        self.fold_case = fold_case
        super().__init__(self._pick)

    def _pick(self, text: str) -> _T:
        wanted = text.lower() if self.fold_case else text
        for choice in self.choices:
            if choice == wanted:
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, not {text!r}")


class FilePath(Text[str]):
    """A file's path. Reading the file does not look for it (`check-config` does, and the
    `serve` flag requires it to exist)."""

    def __init__(self) -> None:
        super().__init__(str)


class Bool(Kind[bool]):
    def read(self, value: object, path: Path) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, not {_kind(value)}", path)
        return value

    def toml(self, value: bool) -> str:
        return "true" if value else "false"


class Int(Kind[int]):
    def __init__(self, minimum: int, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def read(self, value: object, path: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, not {_kind(value)}", path)
        if value < self.minimum:
            raise Invalid(f"must be at least {self.minimum}, not {value}", path)
        if self.maximum is not None and value > self.maximum:
            raise Invalid(f"must be at most {self.maximum}, not {value}", path)
        return value

    def toml(self, value: int) -> str:
        return str(value)


class TextList(Kind[tuple[_T, ...]]):
    """An array of strings, each turned into an item by `item` and written back as `str(item)`.
    `at_least_one` is the problem an empty array has (None: it may be empty); `unique` drops
    repeated items."""

    repeated = True

    def __init__(
        self, item: Callable[[str], _T], *, at_least_one: str | None = None, unique: bool = False
    ) -> None:
        self.item = item
        self.at_least_one = at_least_one
        self.unique = unique

    def read(self, value: object, path: Path) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise Invalid(f"expected an array of strings, not {_kind(value)}", path)
        for index, text in enumerate(value):
            if not isinstance(text, str):
                raise Invalid(f"expected a string, not {_kind(text)}", (*path, index))
        items: list[_T] = []
        for index, text in enumerate(value):
            try:
                items.append(self.item(text))
            except ValueError as exc:
                raise Invalid(str(exc), (*path, index)) from None
        if not items and self.at_least_one is not None:
            raise Invalid(self.at_least_one, path)
        return tuple(dict.fromkeys(items)) if self.unique else tuple(items)

    def from_flag(self, value: object) -> tuple[_T, ...]:
        return self.read(list(value) if isinstance(value, tuple | list) else value, ())

    def toml(self, value: tuple[_T, ...]) -> str:
        return "[" + ", ".join(_string(str(v)) for v in value) + "]"


class Users(Kind[tuple[tuple[str, str], ...]]):
    """A table of `user = "password"`, kept as sorted (user, password) pairs; hidden, the
    names stay and the passwords go."""

    def read(self, value: object, path: Path) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise Invalid(f'expected a table of user = "password", not {_kind(value)}', path)
        for user, password in value.items():
            if not isinstance(password, str) or not user or '"' in user:
                raise Invalid("expected a password string", (*path, user))
        return tuple(sorted(value.items()))

    def toml(self, value: tuple[tuple[str, str], ...]) -> str:
        return "{" + ", ".join(f"{_string(u)} = {_string(p)}" for u, p in value) + "}"

    def hidden(self, value: tuple[tuple[str, str], ...]) -> str:
        return self.toml(tuple((user, "<hidden>") for user, _ in value))


class Table(Kind[_D]):
    """A table whose keys are `cls`'s settings; a key it lacks keeps its default."""

    def __init__(self, cls: type[_D]) -> None:
        self.cls = cls

    def read(self, value: object, path: Path) -> _D:
        if not isinstance(value, dict):
            raise Invalid("expected a table", path)
        declared = settings(self.cls)
        known = [f.name for f, _ in declared]
        for key in value:
            if key not in known:
                raise Invalid(f"unknown key (known here: {', '.join(known)})", (*path, key))
        for f, _ in declared:
            required = f.default is f.default_factory is dataclasses.MISSING
            if required and f.name not in value:
                raise Invalid("missing", (*path, f.name), missing=True)
        make: Callable[..., _D] = self.cls
        return make(**{f.name: s.kind.read(value[f.name], (*path, f.name))
                       for f, s in declared if f.name in value})


class Tables(Kind[tuple[_D, ...]]):
    """An array of tables (`[[events.subscribe]]`), each read as a `Table(cls)`."""

    def __init__(self, cls: type[_D]) -> None:
        self.table = Table(cls)

    def read(self, value: object, path: Path) -> tuple[_D, ...]:
        if not isinstance(value, list):
            raise Invalid(f"expected an array of tables ([[{dotted(path)}]])", path)
        return tuple(self.table.read(item, (*path, i)) for i, item in enumerate(value))
