"""The MI command registry: names, aliases, parameter recipes and typed parameter access.

A command is declared once, with its canonical name (`dialog:list`), the old OpenSIPS names
it also answers to (`dlg_list`) and its recipes: the parameter-name lists it accepts. A call
matches a recipe exactly as OpenSIPS matches it (`mi/mi.c` get_cmd_recipe): no params picks
the empty recipe; positional params pick the one recipe with that many names and are named in
its order; named params must be exactly one recipe's names. Handlers then read values through
`Params`, whose getters convert and type-check like OpenSIPS' `get_mi_*_param`.

This module knows nothing about HTTP or JSON text (`dispatch`, `http`) nor about what any
command does (`commands`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from switchboard.api import SERVER_ERROR, CommandError, ControlApi

# Details OpenSIPS puts in `data` of a -32602 (mi/mi.h).
TOO_FEW_OR_MANY: Final = "Too few or too many parameters"
NAMES_DO_NOT_MATCH: Final = "Named parameters do not match"
AMBIGUOUS_CALL: Final = "Ambiguous call, use named parameters instead"
NAMED_ONLY: Final = "Command only supports named parameters"

_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")

Recipe = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command handler may use: the node, the registry (for `which`) and a clock."""

    api: ControlApi
    registry: Registry
    clock: Callable[[], float] = time.time


Handler = Callable[[CommandContext, "Params"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Command:
    """One MI command. `recipes` in the order `which command=X` reports them."""

    name: str
    handler: Handler
    recipes: tuple[Recipe, ...] = ((),)
    aliases: tuple[str, ...] = ()
    help: str = ""
    named_only: bool = False

    def __post_init__(self) -> None:
        if not self.recipes:
            raise ValueError(f"MI command {self.name!r} has no recipe")
        seen: set[frozenset[str]] = set()
        for recipe in self.recipes:
            names = frozenset(recipe)
            if len(names) != len(recipe):
                raise ValueError(f"MI command {self.name!r}: repeated name in recipe {recipe}")
            if names in seen:
                raise ValueError(f"MI command {self.name!r}: duplicate recipe {recipe}")
            seen.add(names)


class Params:
    """The parameters of one call, named after the recipe they matched.

    Getters raise `CommandError` -32602 "Invalid params" with OpenSIPS' detail text when a
    value has the wrong type. Asking for a name the recipe does not have is a bug in the
    handler and answers -32000, as OpenSIPS does.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __repr__(self) -> str:
        return f"Params({self._values!r})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def get_raw(self, name: str) -> Any:
        """The value exactly as the JSON carried it."""
        try:
            return self._values[name]
        except KeyError:
            raise CommandError(SERVER_ERROR, "Server error", "Failed to handle parameter") from None

    def get_str(self, name: str) -> str:
        """A string; a JSON integer is accepted and turned into its decimal text."""
        value = self.get_raw(name)
        if isinstance(value, str):
            return value
        if _is_integer(value):
            return str(int(value))
        raise CommandError.invalid_params(f"Bad type for parameter '{name}'")

    def get_opt_str(self, name: str) -> str | None:
        """`get_str` when the matched recipe has `name`, else None."""
        return self.get_str(name) if name in self._values else None

    def get_int(self, name: str) -> int:
        """An integer; a string holding a decimal integer is accepted."""
        value = self.get_raw(name)
        if _is_integer(value):
            return int(value)
        if isinstance(value, str) and _INT_TEXT.match(value):
            return int(value)
        raise CommandError.invalid_params(f"Bad type for parameter '{name}'")

    def get_str_list(self, name: str) -> list[str]:
        """A non-empty array of strings (integers accepted and turned into text)."""
        value = self.get_raw(name)
        if not isinstance(value, list):
            raise CommandError.invalid_params(f"Bad type for parameter '{name}'")
        if not value:
            raise CommandError.invalid_params(f"Empty array in parameter '{name}'")
        items: list[str] = []
        for item in value:
            if isinstance(item, str):
                items.append(item)
            elif _is_integer(item):
                items.append(str(int(item)))
            else:
                raise CommandError.invalid_params(f"Bad type for array item in parameter '{name}'")
        return items


def _is_integer(value: object) -> bool:
    # JSON true/false are not numbers, although Python's bool is an int.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def match_recipe(command: Command, params: Sequence[Any] | Mapping[str, Any] | None) -> Params:
    """Pick the recipe a call's params fit and name them; -32602 when none fits."""
    if not params:
        # Absent, [] and {} all mean "no parameters" (OpenSIPS drops an empty params member).
        if () in command.recipes:
            return Params({})
        raise CommandError.invalid_params(TOO_FEW_OR_MANY)
    recipes = [r for r in command.recipes if r]
    if isinstance(params, Mapping):
        detail = TOO_FEW_OR_MANY
        for recipe in recipes:
            if len(recipe) != len(params):
                continue
            detail = NAMES_DO_NOT_MATCH
            if set(recipe) == set(params):
                return Params({name: params[name] for name in recipe})
        raise CommandError.invalid_params(detail)
    if command.named_only:
        raise CommandError.invalid_params(NAMED_ONLY)
    fitting = [r for r in recipes if len(r) == len(params)]
    if not fitting:
        raise CommandError.invalid_params(TOO_FEW_OR_MANY)
    if len(fitting) > 1:
        raise CommandError.invalid_params(AMBIGUOUS_CALL)
    return Params(dict(zip(fitting[0], params, strict=True)))


class Registry:
    """Commands by canonical name and by alias."""

    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._by_name: dict[str, Command] = {}

    def add(self, command: Command) -> Command:
        """Register `command`; a name or alias already taken is a programming error."""
        for name in (command.name, *command.aliases):
            if name in self._by_name:
                raise ValueError(f"MI command name {name!r} is already registered")
        self._commands.append(command)
        for name in (command.name, *command.aliases):
            self._by_name[name] = command
        return command

    def command(
        self,
        name: str,
        *,
        recipes: Iterable[Sequence[str]] = ((),),
        aliases: Iterable[str] = (),
        help: str = "",
        named_only: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of `add`: one declaration per command."""

        def register(handler: Handler) -> Handler:
            self.add(
                Command(
                    name=name,
                    handler=handler,
                    recipes=tuple(tuple(r) for r in recipes),
                    aliases=tuple(aliases),
                    help=help,
                    named_only=named_only,
                )
            )
            return handler

        return register

    def lookup(self, name: str) -> Command | None:
        return self._by_name.get(name)

    def commands(self) -> list[Command]:
        """Commands in registration order."""
        return list(self._commands)

    def names(self) -> list[str]:
        """Every name a client may call: each canonical name followed by its aliases."""
        return [n for c in self._commands for n in (c.name, *c.aliases)]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name
