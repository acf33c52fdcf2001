"""Pages of a worker's dialogs (`actors.listing`): every live dialog once, in number order,
filtered; dialogs added and removed between pages (and while the index is being made); the
sorted blocks under it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from switchboard.actors.listing import DialogFilter, DialogIndex, SortedNumbers, dialog_id_of
from switchboard.events.opensips import db_id
from switchboard.sip.dialog import Dialog, DialogState, DialogTable, Leg


def _dialog(table: DialogTable, n: int, *, user: str = "u", worker: int = 0) -> Dialog:
    dialog = Dialog(f"{worker:x}.{n:x}", f"call-{n}@test", f"sip:{user}@x", "sip:b@x",
                    DialogState.CONFIRMED, 0.0, Leg(), Leg())
    table.add(dialog)
    return dialog


def _render(dialog: Dialog) -> dict[str, Any]:
    return {"ID": dialog.id, "db_id": db_id(dialog.id)}


async def _walk(index: DialogIndex, wanted: DialogFilter, limit: int,
                between: Any = None) -> list[int]:
    seen: list[int] = []
    after = None
    while True:
        shown, after = await index.page(after, limit, wanted, _render)
        seen.extend(d["db_id"] for d in shown)
        if after is None:
            return seen
        assert len(shown) == limit
        if between is not None:
            between()


async def test_paging_walks_every_call_once() -> None:
    table = DialogTable(0, 0)
    # Out of order, as restored dialogs come.
    for n in (*range(1200, 0, -2), *range(1, 1200, 2)):
        _dialog(table, n, user=f"u{n % 3}")
    index = DialogIndex(table)
    assert await _walk(index, DialogFilter(from_user="u1"), 70) == [
        n for n in range(1, 1201) if n % 3 == 1]
    assert await _walk(index, DialogFilter(), 1000) == list(range(1, 1201))
    assert await _walk(index, DialogFilter(state=int(DialogState.EARLY)), 10) == []


async def test_dialogs_added_and_ended_between_pages() -> None:
    table = DialogTable(0, 0)
    dialogs = {n: _dialog(table, n) for n in range(1, 301)}
    index = DialogIndex(table)
    added = iter(range(301, 10_000))

    def churn() -> None:
        # One dialog ends (an early one and a later one), one starts, each page.
        for n in (min(dialogs), max(dialogs) - 5):
            table.remove(dialogs.pop(n))
        n = next(added)
        dialogs[n] = _dialog(table, n)

    seen = await _walk(index, DialogFilter(), 25, churn)
    assert seen == sorted(set(seen))  # in order, none twice
    assert set(seen) >= set(dialogs)  # every dialog live at the end was listed
    shown, more = await index.page(None, 1000, DialogFilter(), _render)
    assert [d["db_id"] for d in shown] == sorted(dialogs) and more is None
    assert len(index) == len(dialogs)


async def test_dialogs_that_end_while_the_index_is_made_are_not_listed() -> None:
    table = DialogTable(0, 0)
    dialogs = [_dialog(table, n) for n in range(1, 2001)]
    index = DialogIndex(table)
    building = asyncio.ensure_future(index.ready())
    await asyncio.sleep(0)  # the first slice numbered, the rest to come
    table.remove(dialogs[0])
    table.remove(dialogs[-1])
    late = _dialog(table, 2001)
    await building
    shown, _ = await index.page(None, 5000, DialogFilter(), _render)
    assert [d["ID"] for d in shown] == [d.id for d in dialogs[1:-1]] + [late.id]


async def test_dialogs_numbered_after_the_sequence_wrapped_are_listed() -> None:
    table = DialogTable(0, 0xFFFFFFF0)

    def new() -> Dialog:
        dialog = Dialog(table.new_id(), "c", "sip:u@x", "sip:b@x", DialogState.CONFIRMED, 0.0,
                        Leg(), Leg())
        table.add(dialog)
        return dialog

    before = [new() for _ in range(10)]
    index = DialogIndex(table)
    assert len((await index.page(None, 100, DialogFilter(), _render))[0]) == 10
    after = [new() for _ in range(10)]  # ...fffffffb to ffffffff, then 0 to 4
    assert after[-1].id == "0.4"
    shown, _ = await index.page(None, 100, DialogFilter(), _render)
    assert sorted(d["ID"] for d in shown) == sorted(d.id for d in before + after)
    assert [d["db_id"] for d in shown] == sorted(d["db_id"] for d in shown)


async def test_a_dialog_id_from_its_number_and_other_workers() -> None:
    table = DialogTable(3, 0)
    dialog = _dialog(table, 0xABC, worker=3)
    assert dialog_id_of(db_id(dialog.id)) == "3.abc"
    index = DialogIndex(table)
    shown, more = await index.page(db_id("3.abb"), 1, DialogFilter(), _render)
    assert (shown, more) == ([_render(dialog)], None)
    assert await index.page(db_id("3.abc"), 1, DialogFilter(), _render) == ([], None)


def test_sorted_numbers_split_and_find() -> None:
    rng = random.Random(7)
    numbers = SortedNumbers(list(range(0, 3000, 3)))
    model = set(range(0, 3000, 3))
    for _ in range(5000):
        n = rng.randrange(4000)
        if n in model and rng.random() < 0.5:
            numbers.discard(n)
            model.discard(n)
        elif n not in model:
            numbers.add(n)
            model.add(n)
    assert all(len(block) <= 1000 for block in numbers.blocks)
    assert [n for block in numbers.blocks for n in block] == sorted(model)
    assert numbers.maxes == [block[-1] for block in numbers.blocks]
    for after in (None, -1, 0, 1234, 3999):
        want = [n for n in sorted(model) if after is None or n > after][:777]
        assert numbers.after(after, 777) == want
    numbers.discard(10_000)  # not there: nothing happens
    assert len(numbers) == len(model)
    assert all((n in numbers) is (n in model) for n in range(-1, 4001))
