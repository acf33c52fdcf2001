"""bench/shared_port.py and the bench's Ray system behind one address: the parts that run
without Ray or SIPp."""

from __future__ import annotations

from pathlib import Path

from bench import shared_port, systems
from switchboard.cluster.owner import Ownership


def test_a_ray_system_behind_one_address_is_known_and_has_one_address() -> None:
    assert systems.known_system("switchboard-ray-2-shared")
    ray = systems.make_system("switchboard-ray-2-shared")
    ray.port = 20000
    assert ray.addresses == [("127.0.0.1", 20000)]
    command = ray.command(20000)
    try:
        config = Path(command[command.index("--config") + 1])
        assert config.read_text() == "[runtime]\nshared_port = true\n"
    finally:
        ray.stop()
    assert not config.exists()
    # The bench's other Ray systems keep a port per worker, as their figures were taken.
    each = systems.make_system("switchboard-ray-2")
    command = each.command(20000)
    try:
        config = Path(command[command.index("--config") + 1])
        assert config.read_text() == "[runtime]\nshared_port = false\n"
    finally:
        each.stop()


def test_the_bench_messages_are_classified_as_their_kind_says() -> None:
    ownership = Ownership((0, 1))
    response, bye = (shared_port._messages(t, 3) for t in (shared_port.RESPONSE,
                                                             shared_port.BYE))
    assert [ownership.owner(m) for m in response + bye] == [1] * 6
    invites = shared_port._messages(shared_port.INVITE, 20)
    assert {ownership.owner(m) for m in invites} == {0, 1}


def test_the_isolated_measurements_run() -> None:
    found = shared_port.classification_us(20)
    assert set(found) == {"invite_by_call_id", "response_by_via", "in_dialog_by_route"}
    assert all(v > 0 for v in found.values())
    handed = shared_port.handoff_us(200, burst=16)
    assert handed["messages"] == 200 and handed["wall_us_per_message"] > 0
