"""MI command registry: recipe matching exactly as OpenSIPS does it, typed parameter access."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.api import CommandError
from switchboard.mi.registry import (
    AMBIGUOUS_CALL,
    NAMED_ONLY,
    NAMES_DO_NOT_MATCH,
    TOO_FEW_OR_MANY,
    Command,
    CommandContext,
    Params,
    Registry,
    match_recipe,
)


async def _noop(ctx: CommandContext, params: Params) -> Any:
    return None


def _command(*recipes: tuple[str, ...], named_only: bool = False) -> Command:
    return Command("test:cmd", _noop, recipes=recipes, named_only=named_only)


def _invalid(detail: str) -> CommandError:
    return CommandError(-32602, "Invalid params", detail)


# --- recipe matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("params", [None, [], {}])
def test_no_params_match_the_empty_recipe(params: Any) -> None:
    bound = match_recipe(_command((), ("callid",)), params)
    assert bound.names == ()


@pytest.mark.parametrize("params", [None, [], {}])
def test_no_params_without_an_empty_recipe_is_too_few(params: Any) -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command(("callid",)), params)
    assert err.value == _invalid(TOO_FEW_OR_MANY)


def test_positional_params_are_named_in_recipe_order() -> None:
    command = _command((), ("callid",), ("callid", "from_tag"))
    bound = match_recipe(command, ["c1", "t1"])
    assert bound.names == ("callid", "from_tag")
    assert bound.get_str("callid") == "c1"
    assert bound.get_str("from_tag") == "t1"


def test_positional_count_matching_no_recipe_is_too_few_or_many() -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command((), ("callid",)), ["a", "b"])
    assert err.value == _invalid(TOO_FEW_OR_MANY)


def test_positional_call_fitting_two_recipes_is_ambiguous() -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command(("callid",), ("dialog_id",)), ["x"])
    assert err.value == _invalid(AMBIGUOUS_CALL)


def test_named_params_must_be_exactly_one_recipe() -> None:
    command = _command(("callid",), ("callid", "from_tag"))
    bound = match_recipe(command, {"from_tag": "t", "callid": "c"})
    # Named in recipe order, whatever order the request used.
    assert bound.names == ("callid", "from_tag")


def test_named_params_with_the_right_count_but_wrong_names() -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command(("callid", "from_tag")), {"callid": "c", "to_tag": "t"})
    assert err.value == _invalid(NAMES_DO_NOT_MATCH)


def test_named_params_with_a_count_no_recipe_has() -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command(("callid",)), {"callid": "c", "extra": "x"})
    assert err.value == _invalid(TOO_FEW_OR_MANY)


def test_named_only_command_refuses_positional_params() -> None:
    with pytest.raises(CommandError) as err:
        match_recipe(_command(("callid",), named_only=True), ["c"])
    assert err.value == _invalid(NAMED_ONLY)
    assert match_recipe(_command(("callid",), named_only=True), {"callid": "c"}).names == (
        "callid",
    )


# --- typed parameter access --------------------------------------------------------------------


def test_get_str_accepts_strings_and_integers() -> None:
    params = Params({"a": "x", "b": 42, "c": 7.0})
    assert params.get_str("a") == "x"
    assert params.get_str("b") == "42"
    assert params.get_str("c") == "7"


@pytest.mark.parametrize("value", [True, None, 1.5, [], {}])
def test_get_str_refuses_other_types(value: Any) -> None:
    with pytest.raises(CommandError) as err:
        Params({"callid": value}).get_str("callid")
    assert err.value == _invalid("Bad type for parameter 'callid'")


def test_get_opt_str() -> None:
    assert Params({}).get_opt_str("extra_hdrs") is None
    assert Params({"extra_hdrs": "X: y"}).get_opt_str("extra_hdrs") == "X: y"


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ("12", 12), ("-3", -3), ("+4", 4)])
def test_get_int_accepts_integers_and_integer_text(value: Any, expected: int) -> None:
    assert Params({"expire": value}).get_int("expire") == expected


@pytest.mark.parametrize("value", ["1.5", "abc", "", True, 2.5, None, ["1"]])
def test_get_int_refuses_anything_else(value: Any) -> None:
    with pytest.raises(CommandError) as err:
        Params({"expire": value}).get_int("expire")
    assert err.value == _invalid("Bad type for parameter 'expire'")


def test_get_str_list() -> None:
    assert Params({"statistics": ["dialog:", 5]}).get_str_list("statistics") == ["dialog:", "5"]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("all", "Bad type for parameter 'statistics'"),
        ([], "Empty array in parameter 'statistics'"),
        (["all", {}], "Bad type for array item in parameter 'statistics'"),
        ([None], "Bad type for array item in parameter 'statistics'"),
    ],
)
def test_get_str_list_refusals(value: Any, detail: str) -> None:
    with pytest.raises(CommandError) as err:
        Params({"statistics": value}).get_str_list("statistics")
    assert err.value == _invalid(detail)


def test_asking_for_a_parameter_outside_the_recipe_is_a_server_error() -> None:
    with pytest.raises(CommandError) as err:
        Params({"callid": "c"}).get_str("leg")
    assert err.value == CommandError(-32000, "Server error", "Failed to handle parameter")


# --- the registry ------------------------------------------------------------------------------


def test_decorator_registers_names_and_aliases() -> None:
    registry = Registry()

    @registry.command("dialog:list", aliases=("dlg_list",), recipes=((), ("callid",)))
    async def dialog_list(ctx: CommandContext, params: Params) -> Any:
        return None

    @registry.command("uptime")
    async def uptime(ctx: CommandContext, params: Params) -> Any:
        return None

    assert registry.names() == ["dialog:list", "dlg_list", "uptime"]
    assert registry.lookup("dlg_list") is registry.lookup("dialog:list")
    command = registry.lookup("dlg_list")
    assert command is not None
    assert command.name == "dialog:list"
    assert command.recipes == ((), ("callid",))
    assert command.handler is dialog_list
    uptime_command = registry.lookup("uptime")
    assert uptime_command is not None
    assert uptime_command.recipes == ((),)
    assert registry.lookup("nope") is None
    assert "dlg_list" in registry
    assert [c.name for c in registry.commands()] == ["dialog:list", "uptime"]


def test_a_name_can_be_registered_only_once() -> None:
    registry = Registry()
    registry.add(Command("dialog:list", _noop, aliases=("dlg_list",)))
    with pytest.raises(ValueError, match="dlg_list"):
        registry.add(Command("dlg_list", _noop))
    with pytest.raises(ValueError, match="dialog:list"):
        registry.add(Command("other", _noop, aliases=("dialog:list",)))
    # A refused command leaves nothing behind.
    assert registry.names() == ["dialog:list", "dlg_list"]


def test_bad_recipes_are_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match="duplicate recipe"):
        Command("x", _noop, recipes=(("a", "b"), ("b", "a")))
    with pytest.raises(ValueError, match="repeated name"):
        Command("x", _noop, recipes=(("a", "a"),))
    with pytest.raises(ValueError, match="no recipe"):
        Command("x", _noop, recipes=())
