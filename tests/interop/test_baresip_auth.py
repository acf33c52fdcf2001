"""Digest authentication against a real user agent (baresip): REGISTER is challenged and
accepted with the right password, refused with a wrong one, and with `auth.invites` and no
trusted network, a call is challenged (407) and goes through once baresip authenticates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.baresip import PeerFactory
from tests.support.server import SwitchboardServer

pytestmark = [pytest.mark.baresip, pytest.mark.interop]


def serve_with_auth(switchboard_server: Callable[..., SwitchboardServer], tmp_path: Path,
                    *, trusted: str) -> SwitchboardServer:
    config = tmp_path / "auth.toml"
    config.write_text(
        "[auth]\n"
        'users = {alice = "alice-pw", bob = "bob-pw"}\n'
        "invites = true\n"
        "[proxy]\n"
        f"trusted = {trusted}\n"
    )
    return switchboard_server("--config", str(config))


def test_register_needs_the_right_password(
    switchboard_server: Callable[..., SwitchboardServer], peer: PeerFactory, tmp_path: Path
) -> None:
    server = serve_with_auth(switchboard_server, tmp_path, trusted='["127.0.0.0/8"]')
    registrar = f"sip:127.0.0.1:{server.udp_port}"
    good = peer("alice", registrar=registrar, extra_args=("--password", "alice-pw"))
    good.wait_event("registered")
    bad = peer("bob", registrar=registrar, extra_args=("--password", "wrong"))
    bad.wait_event("register_failed")
    stats = server.mi_result("statistics:get", statistics=["usrloc:", "auth:"])
    assert stats["usrloc:registered_contacts"] == 1
    assert stats["auth:challenges"] >= 2


def test_a_call_from_an_untrusted_source_is_challenged_and_authenticated(
    switchboard_server: Callable[..., SwitchboardServer], peer: PeerFactory, tmp_path: Path
) -> None:
    server = serve_with_auth(switchboard_server, tmp_path, trusted="[]")
    registrar = f"sip:127.0.0.1:{server.udp_port}"
    bob = peer("bob", registrar=registrar, auto_answer=True,
               extra_args=("--password", "bob-pw"))
    alice = peer("alice", registrar=registrar, extra_args=("--password", "alice-pw"))
    for p in (bob, alice):
        p.wait_event("registered")
    challenges_before = server.mi_result("statistics:get", statistics=["auth:"])["auth:challenges"]
    alice.dial(uri="sip:bob@127.0.0.1")
    alice.wait_event("established")
    bob.wait_event("established")
    after = server.mi_result("statistics:get", statistics=["auth:"])["auth:challenges"]
    assert after == challenges_before + 1  # the INVITE was challenged once (407)
    dialogs = server.mi_result("dialog:list")["Dialogs"]
    assert [d["state"] for d in dialogs] == [4]
    alice.hangup()
    bob.wait_event("closed")
