"""Results as JSON: a dataclass that writes itself with `asdict` and reads back the fields it
knows, so that a results file written by an older or newer bench still renders."""

from __future__ import annotations

from dataclasses import Field, asdict
from typing import Any, ClassVar, Self


class JsonRecord:
    """Base of a results dataclass (slotted ones too: it adds no instance attribute)."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on the subclass

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
