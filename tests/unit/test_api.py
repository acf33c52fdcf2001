"""`switchboard.api.CommandError` survives pickling (the ray runtime's controller raises it to
callers in other processes) with its code, message and data."""

from __future__ import annotations

import pickle

import pytest

from switchboard.api import CommandError


@pytest.mark.parametrize(
    "error",
    [
        CommandError(404, "Dialog not found"),
        CommandError.invalid_params("leg: must be caller or callee"),
        CommandError(400, "Bad parameter value", "Unknown event 'E_NOPE'"),
    ],
)
def test_command_error_pickles(error: CommandError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CommandError
    assert (copy.code, copy.message, copy.data) == (error.code, error.message, error.data)
    assert str(copy) == str(error)
