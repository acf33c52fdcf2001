"""The REST API's pure parts: the refusal table, the operation tracker, the idempotency
store, the call view and paging, and the OpenAPI document (checked by a validator)."""

from __future__ import annotations

import asyncio

import pytest
from openapi_spec_validator import validate

from switchboard.api import CommandError, command_error, refusal
from switchboard.rest.calls import dialog_number, media_direction, user_of
from switchboard.rest.openapi import document
from switchboard.rest.problems import problem_for
from switchboard.rest.tracker import Answer, Idempotency, KeyReused, OperationTracker
from switchboard.sip.operations import Refused, hold, transfer


def test_openapi_document_is_valid_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


@pytest.mark.parametrize(("refused", "status", "field"), [
    (Refused.bad_input("destination", "CR or LF"), 422, "destination"),
    (Refused(420, "Bad leg"), 422, "leg"),
    (Refused(404, "Dialog not found"), 404, None),
    (Refused(491, "Request Pending"), 409, None),
    (Refused(410, "Dialog not ready"), 409, None),
    (Refused(500, "Server error", "not sent"), 502, None),
])
def test_refusals_map_once(refused: Refused, status: int, field: str | None) -> None:
    problem = problem_for(refused)
    assert (problem.status, problem.field, problem.sip_status) == (status, field, refused.status)
    # What the MI says and what REST says come from the same refusal.
    again = problem_for(refusal(command_error(refused)))
    assert (again.status, again.field, again.kind) == (status, field, problem.kind)


def test_refusal_of_a_module_error_keeps_its_status() -> None:
    assert refusal(CommandError(404, "Transfer dialog not found")).status == 404


def test_tracker_follows_a_transfer_and_ignores_other_calls() -> None:
    tracker = OperationTracker(new_id=iter(["op1", "op2"]).__next__)
    op = tracker.begin(transfer("c1", "caller", "sip:x@example.com",
                                operation_id=tracker.new_id()), 10.0)
    assert op.id == "op1"
    tracker.sent(op.id, 10.5)
    base = {"leg": "caller", "destination": "sip:x@example.com", "transfer_callid": "",
            "operation_id": "op1"}
    assert tracker.observe("E_CALL_TRANSFER", {**base, "callid": "c2", "state": "fail",
                                               "status": "603 Decline"}, 11.0) is None
    # The same call's events of an operation made elsewhere (the MI: no id) are not its.
    untracked = {k: v for k, v in base.items() if k != "operation_id"}
    assert tracker.observe("E_CALL_TRANSFER", {**untracked, "callid": "c1", "state": "ok",
                                               "status": "200 OK"}, 11.5) is None
    assert op.state == "pending"
    assert tracker.observe("E_CALL_TRANSFER", {**base, "callid": "c1", "state": "fail",
                                               "status": "603 Decline"}, 12.0) == "op1"
    assert (op.state, op.sip_status, op.reason, op.updated_at) == ("fail", 603, "Decline", 12.0)
    # A NOTIFY that comes after is a step of the same operation; the outcome stays.
    tracker.observe("E_CALL_TRANSFER", {**base, "callid": "c1", "state": "notify",
                                        "status": "100 Trying"}, 13.0)
    assert op.state == "fail" and op.steps[-1].step == "notify"


def test_a_refused_operation_gives_the_events_back() -> None:
    tracker = OperationTracker(new_id=iter(["op1", "op2"]).__next__)
    first = tracker.begin(hold("c1", "caller", operation_id=tracker.new_id()), 1.0)
    second = tracker.begin(hold("c1", "caller", operation_id=tracker.new_id()), 2.0)
    tracker.abandon(second.id)
    assert tracker.get("op2") is None
    params = {"callid": "c1", "leg": "caller", "action": "hold", "operation_id": "op1"}
    assert tracker.observe("E_CALL_HOLD", {**params, "state": "start"}, 3.0) == first.id
    assert tracker.observe("E_CALL_HOLD", {**params, "state": "ok"}, 4.0) == first.id
    assert first.state == "ok"
    assert tracker.held("c1") == {"caller": True}


def test_unhold_events_do_not_finish_a_hold() -> None:
    tracker = OperationTracker()
    op = tracker.begin(hold("c1", None, operation_id=tracker.new_id()), 1.0)
    other = tracker.begin(hold("c1", None, on=False, operation_id=tracker.new_id()), 1.5)
    params = {"callid": "c1", "leg": "caller", "action": "unhold"}
    assert tracker.observe("E_CALL_HOLD", {**params, "state": "ok"}, 2.0) is None
    assert tracker.observe("E_CALL_HOLD", {**params, "state": "ok",
                                           "operation_id": other.id}, 2.0) == other.id
    assert op.state == "pending"


def test_hold_fails_when_one_leg_fails() -> None:
    tracker = OperationTracker()
    op = tracker.begin(hold("c1", None, operation_id=tracker.new_id()), 1.0)
    for leg, state, status in (("caller", "start", None), ("callee", "start", None),
                               ("caller", "ok", "200 OK"),
                               ("callee", "fail", "488 Not Acceptable Here")):
        tracker.observe("E_CALL_HOLD", {"callid": "c1", "leg": leg, "action": "hold",
                                        "state": state, "status": status,
                                        "operation_id": op.id}, 2.0)
    assert op.state == "fail"
    # The answer of the leg that failed.
    assert (op.sip_status, op.reason) == (488, "Not Acceptable Here")


def test_an_operation_without_an_id_gets_one_its_events_never_carry() -> None:
    tracker = OperationTracker(new_id=iter(["op1"]).__next__)
    op = tracker.begin(hold("c1", "caller"), 1.0)
    assert op.id == "op1"
    assert tracker.observe("E_CALL_HOLD", {"callid": "c1", "leg": "caller",
                                           "action": "hold", "state": "ok"}, 2.0) is None
    assert op.state == "pending"


async def test_idempotency_makes_once_and_refuses_another_request() -> None:
    store = Idempotency()
    made: list[int] = []

    async def make() -> Answer:
        made.append(1)
        await asyncio.sleep(0)
        return Answer(202, b"{}", "application/json")

    answers = await asyncio.gather(*(store.answer("k", "f", 0.0, make) for _ in range(3)))
    assert len(made) == 1 and len(set(answers)) == 1
    with pytest.raises(KeyReused):
        await store.answer("k", "other", 1.0, make)
    # A day later the key is free again.
    await store.answer("k", "other", 2 * 86400.0, make)
    assert len(made) == 2


@pytest.mark.parametrize(("uri", "user"), [
    ("sip:alice@example.com", "alice"), ("<sips:bob@x;transport=tls>", "bob"),
    ("sip:example.com", ""), ("tel:+4930123;phone-context=x", "+4930123"), ("http://x", "")])
def test_user_of(uri: str, user: str) -> None:
    assert user_of(uri) == user


def test_media_direction_stream_level_wins() -> None:
    sdp = "v=0\r\na=sendrecv\r\nm=audio 1 RTP/AVP 0\r\na=inactive\r\n"
    assert media_direction(sdp) == "inactive"
    assert media_direction("v=0\r\nm=audio 1 RTP/AVP 0\r\n") == "sendrecv"
    assert media_direction("") is None


def test_dialog_numbers_of_dialog_ids() -> None:
    # The paging itself is the worker's: tests/unit/actors/test_listing.py.
    assert dialog_number("1.2a") == (1 << 32) | 0x2A
    assert dialog_number("ffffffff.ffffffff") == (1 << 64) - 1
    for key in ("1.", ".2", "1.2.3", "call@x", "1.2x", "123456789.1"):
        assert dialog_number(key) is None
