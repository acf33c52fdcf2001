"""The `serve` flags, as the schema declares them: which keys have one (`serve_flags`, from
which `cli.py` makes its options) and `apply_overrides`, which puts given flags on top of a
`Config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from .kinds import ConfigError, Flag, Invalid, Setting, settings
from .schema import Config


class ServeFlag(NamedTuple):
    flag: Flag
    setting: Setting[Any]
    section: str
    key: str


def serve_flags() -> list[ServeFlag]:
    """Every key that a `serve` flag overrides, in the schema's order."""
    defaults = Config()
    return [
        ServeFlag(s.flag, s, section.name, f.name)
        for section, _ in settings(defaults)
        for f, s in settings(getattr(defaults, section.name))
        if s.flag is not None
    ]


def apply_overrides(config: Config, **flags: object) -> Config:
    """Put `serve` flags on top of `config`, each given by its parameter name (`mi_http` for
    `--mi-http`). A flag that is given replaces the file's value (a repeated flag the whole
    list); None, or no item of a repeated flag, leaves it alone. Errors name the flag."""
    declared = {f.flag.param: f for f in serve_flags()}
    changes: dict[str, dict[str, object]] = {}
    for param, given in flags.items():
        serve_flag = declared.get(param)
        if serve_flag is None:
            raise TypeError(f"apply_overrides() got an unexpected keyword argument {param!r}")
        kind = serve_flag.setting.kind
        if given is None or (kind.repeated and not given):
            continue
        try:
            value = kind.from_flag(given)
        except Invalid as exc:
            raise ConfigError(serve_flag.flag.name, exc.problem) from None
        changes.setdefault(serve_flag.section, {})[serve_flag.key] = value
    return dataclasses.replace(config, **{
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in changes.items()
    })
