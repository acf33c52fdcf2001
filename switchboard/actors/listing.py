"""A worker's live dialogs a page at a time, in dialog-number order (`GET /api/v1/calls`): a
page costs what it shows, however many dialogs the worker holds.

`DialogIndex` keeps the numbers of a table's dialogs (`db_id`: worker, then sequence) sorted,
in blocks (a sorted list of sorted lists, the layout of `sortedcontainers`): a cursor is found
with two bisections, a removal touches one block. It is made when someone first lists (the
table's dialogs numbered a slice at a time, the loop turning in between) and kept from then
on: the table tells it of each dialog that leaves (`DialogTable.on_remove`), and before each
page it takes the dialogs added since it last looked, newest first, down to the first it had
numbered before (a dialog is added to the table last). A worker that nobody lists this way
pays nothing.

`DialogFilter` is what a page may be narrowed to (state, the users of From and To): matched on
the dialog itself, so only the dialogs shown are rendered. A filter that few dialogs match
makes a page read more of the index, a slice at a time with the loop turning in between.
Knows the dialog table, not HTTP or runtimes.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..events.opensips import db_id
from ..sip.dialog import Dialog, DialogTable

BLOCK: Final = 1000  # numbers in a block before it is split in two
SLICE: Final = 500  # dialogs numbered or read between two turns of the loop


def user_of(uri: str) -> str:
    """The user part of a SIP or tel URI (`sip:alice@host;x` -> `alice`), "" when none."""
    text = uri.strip()
    if "<" in text:
        text = text.partition("<")[2].partition(">")[0]
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips", "tel"):
        return ""
    if scheme.lower() == "tel":
        return rest.partition(";")[0]
    user, at, _ = rest.partition("@")
    return user.partition(";")[0] if at else ""


def dialog_id_of(number: int) -> str:
    """The dialog id of a `db_id` (its inverse)."""
    return f"{number >> 32:x}.{number & 0xFFFFFFFF:x}"


@dataclass(frozen=True, slots=True)
class DialogFilter:
    """The dialogs a page shows: in `state` (an OpenSIPS state number), from and to users."""

    state: int | None = None
    from_user: str | None = None
    to_user: str | None = None

    def matches(self, dialog: Dialog) -> bool:
        if self.state is not None and int(dialog.state) != self.state:
            return False
        if self.from_user is not None and user_of(dialog.from_uri) != self.from_user:
            return False
        return self.to_user is None or user_of(dialog.to_uri) == self.to_user


class SortedNumbers:
    """Integers kept sorted in blocks of at most `BLOCK`; `maxes[i]` is block i's last."""

    __slots__ = ("blocks", "maxes")

    def __init__(self, ordered: list[int] | None = None) -> None:
        ordered = ordered or []
        self.blocks = [ordered[i:i + BLOCK // 2] for i in range(0, len(ordered), BLOCK // 2)]
        self.maxes = [block[-1] for block in self.blocks]

    def __len__(self) -> int:
        return sum(len(block) for block in self.blocks)

    def add(self, number: int) -> None:
        if not self.blocks:
            self.blocks, self.maxes = [[number]], [number]
            return
        at = min(bisect_left(self.maxes, number), len(self.blocks) - 1)
        block = self.blocks[at]
        insort(block, number)
        self.maxes[at] = block[-1]
        if len(block) > BLOCK:
            half = len(block) // 2
            self.blocks[at:at + 1] = [block[:half], block[half:]]
            self.maxes[at:at + 1] = [block[half - 1], block[-1]]

    def __contains__(self, number: int) -> bool:
        at = bisect_left(self.maxes, number)
        if at == len(self.blocks):
            return False
        block = self.blocks[at]
        index = bisect_left(block, number)
        return index < len(block) and block[index] == number

    def discard(self, number: int) -> None:
        at = bisect_left(self.maxes, number)
        if at == len(self.blocks):
            return
        block = self.blocks[at]
        index = bisect_left(block, number)
        if index == len(block) or block[index] != number:
            return
        del block[index]
        if block:
            self.maxes[at] = block[-1]
        else:
            del self.blocks[at], self.maxes[at]

    def after(self, number: int | None, count: int) -> list[int]:
        """Up to `count` numbers greater than `number` (every one when None), in order."""
        out: list[int] = []
        if number is None:
            at, index = 0, 0
        else:
            at = bisect_right(self.maxes, number)
            if at == len(self.blocks):
                return out
            index = bisect_right(self.blocks[at], number)
        while at < len(self.blocks) and len(out) < count:
            block = self.blocks[at]
            out.extend(block[index:index + count - len(out)])
            at, index = at + 1, 0
        return out


class DialogIndex:
    """The dialogs of one table by number, for pages (see the module's docstring)."""

    def __init__(self, table: DialogTable) -> None:
        self._table = table
        self._numbers: SortedNumbers | None = None
        self._building: asyncio.Future[None] | None = None
        self._removals: list[int] = []

    async def ready(self) -> None:
        """Number the table's dialogs (once; slices, the loop turning in between), then take
        in those added since the last call."""
        if self._numbers is None:
            if self._building is None:
                self._building = asyncio.ensure_future(self._build())
            await asyncio.shield(self._building)
        self._take_new()

    async def _build(self) -> None:
        table = self._table
        # From here on every dialog that leaves is forgotten (or, while this is being
        # made, remembered to be), so none is listed after it ended.
        table.on_remove.append(self._removed)
        dialogs = list(table)
        numbers: list[int] = []
        for start in range(0, len(dialogs), SLICE):
            if start:
                await asyncio.sleep(0)
            for dialog in dialogs[start:start + SLICE]:
                if table.by_id(dialog.id) is dialog:
                    numbers.append(db_id(dialog.id))
        dialogs.clear()
        gone = set(self._removals)
        self._removals = []
        numbers.sort()  # in table order already but for restored dialogs: nearly sorted
        self._numbers = SortedNumbers([n for n in numbers if n not in gone])

    def _removed(self, dialog: Dialog) -> None:
        if self._numbers is None:
            self._removals.append(db_id(dialog.id))
        else:
            self._numbers.discard(db_id(dialog.id))

    def _take_new(self) -> None:
        # The dialogs added since the last look come first, newest first, and none of them
        # is numbered yet; the first that is was there then (an ended one left the index).
        # Not "numbered above the last": sequences wrap, and a number may come back.
        numbers = self._numbers
        assert numbers is not None
        new: list[int] = []
        for dialog in self._table.newest_first():
            number = db_id(dialog.id)
            if number in numbers:
                break
            new.append(number)
        for number in reversed(new):
            numbers.add(number)

    def __len__(self) -> int:
        return 0 if self._numbers is None else len(self._numbers)

    async def page(self, after: int | None, limit: int, wanted: DialogFilter,
                   render: Callable[[Dialog], dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], int | None]:
        """The first `limit` live dialogs numbered above `after` that `wanted` matches,
        rendered; and the cursor of the next page (the last one's number), None when no
        dialog after them matches."""
        await self.ready()
        table = self._table
        chosen: list[Dialog] = []
        cursor = after
        while len(chosen) <= limit:
            assert self._numbers is not None
            numbers = self._numbers.after(cursor, SLICE)
            for number in numbers:
                dialog = table.by_id(dialog_id_of(number))
                if dialog is not None and dialog.active and wanted.matches(dialog):
                    chosen.append(dialog)
                    if len(chosen) > limit:
                        break
            if len(numbers) < SLICE or len(chosen) > limit:
                break
            cursor = numbers[-1]
            await asyncio.sleep(0)  # a filter few match: let SIP traffic through
            self._take_new()
        more = len(chosen) > limit
        shown = chosen[:limit]
        return ([render(d) for d in shown],
                db_id(shown[-1].id) if more and shown else None)
