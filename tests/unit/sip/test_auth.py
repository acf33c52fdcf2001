"""Digest authentication (RFC 2617 / RFC 3261 §22) in the registrar and for calls from
untrusted sources. The client side is computed independently of `sip/auth.py`
(`tests.unit.kit.auth`)."""

from __future__ import annotations

import itertools

import pytest

from switchboard.sip import Response, parse_message
from switchboard.sip.auth import DigestAuth, parse_credentials
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.auth import credentials
from tests.unit.kit.proxy import invite, sip_request

PROXY = Address("udp", "192.0.2.10", 5060)
ALICE = Address("udp", "198.51.100.8", 5070)
USERS = (("alice", "s3cret"),)


def proxy(**config: object) -> Proxy:
    numbers = itertools.count(1)
    config.setdefault("auth_users", USERS)
    return Proxy(ProxyConfig(listeners=(PROXY,), domains=("example.org",),  # type: ignore[arg-type]
                             **config), lambda: f"{next(numbers):08x}")


def final(p: Proxy, data: bytes, now: float = 0.0) -> Response:
    p.receive(data, ALICE, PROXY, now)
    answers = [parse_message(d.data) for d in p.outbox]
    p.outbox.clear()
    last = answers[-1]
    assert isinstance(last, Response)
    return last


def register(extra: tuple[str, ...] = (), branch: str = "z9hG4bKr1", cseq: int = 1,
             user: str = "alice") -> bytes:
    return sip_request("REGISTER", "sip:example.org", branch=branch, cseq=cseq,
                       via=f"SIP/2.0/UDP 198.51.100.8:5070;branch={branch}",
                       from_uri=f"sip:{user}@example.org", to_uri=f"sip:{user}@example.org",
                       contact=f"sip:{user}@198.51.100.8:5070", extra=("Expires: 600", *extra))


def test_register_is_challenged_then_accepted() -> None:
    p = proxy()
    challenge = final(p, register())
    assert challenge.status == 401
    www = challenge.get("www-authenticate")
    assert www is not None and 'realm="example.org"' in www and 'qop="auth"' in www
    ok = final(p, register((f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org')}",),
                           branch="z9hG4bKr2", cseq=2))
    assert ok.status == 200
    assert p.statistics()["usrloc:registered_contacts"] == 1


@pytest.mark.parametrize("password", ["wrong", ""])
def test_wrong_password_is_challenged_again(password: str) -> None:
    p = proxy()
    www = final(p, register()).get("www-authenticate") or ""
    again = final(p, register((
        f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org', password=password)}",),
        branch="z9hG4bKr2", cseq=2))
    assert again.status == 401
    assert p.statistics()["usrloc:registered_contacts"] == 0


def test_registering_somebody_else_is_forbidden() -> None:
    p = proxy(auth_users=(("alice", "s3cret"), ("bob", "pw")))
    www = final(p, register(user="bob")).get("www-authenticate") or ""
    forged = register((f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org')}",),
                      branch="z9hG4bKr2", cseq=2, user="bob")
    assert final(p, forged).status == 403


def test_an_old_nonce_gets_a_stale_challenge() -> None:
    p = proxy()
    www = final(p, register()).get("www-authenticate") or ""
    late = register((f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org')}",),
                    branch="z9hG4bKr2", cseq=2)
    again = final(p, late, now=1000.0)
    assert again.status == 401
    assert "stale=true" in (again.get("www-authenticate") or "")


def test_invite_from_an_untrusted_source_needs_proxy_credentials() -> None:
    p = proxy(trusted=("198.51.100.0/24",), auth_invites=True)
    p2 = proxy(auth_invites=True)
    far = "sip:bob@example.org"
    call = invite(ruri=far, via="SIP/2.0/UDP 198.51.100.8:5070;branch=z9hG4bKi1")
    # Trusted: no challenge (bob is not registered, so 404 from our domain).
    assert final(p, call).status == 404
    challenge = final(p2, call)
    assert challenge.status == 407
    value = challenge.get("proxy-authenticate") or ""
    authed = invite(ruri=far, via="SIP/2.0/UDP 198.51.100.8:5070;branch=z9hG4bKi2", cseq=2,
                    extra=[f"Proxy-Authorization: {credentials(value, 'INVITE', far)}"])
    assert final(p2, authed).status == 404  # authenticated, then routed as usual


def test_credentials_parse_quoted_values_and_tokens() -> None:
    assert parse_credentials('Digest username="a\\"b", nc=00000001, qop=auth') == {
        "username": 'a"b', "nc": "00000001", "qop": "auth"}
    assert parse_credentials("Basic YWxhZGRpbg==") is None


def test_a_nonce_from_another_process_is_refused() -> None:
    mine = DigestAuth("example.org", dict(USERS), b"one")
    theirs = DigestAuth("example.org", dict(USERS), b"two")
    value = credentials(theirs.challenge(0.0), "REGISTER", "sip:example.org")
    verdict = mine.check(value, "REGISTER", "sip:example.org", 0.0)
    assert verdict.user is None and verdict.failed  # a nonce we never made is a guess
    assert theirs.check(value, "REGISTER", "sip:example.org", 0.0).user == "alice"


# -- replay (RFC 7616 §3.3, §5.12): nonces are remembered and counted ---------------------------


def test_both_algorithms_are_offered_in_the_configured_order_with_one_nonce() -> None:
    challenge = final(proxy(), register())
    values = challenge.get_all("www-authenticate")
    assert [parse_credentials(v)["algorithm"] for v in values] == ["MD5", "SHA-256"]  # type: ignore[index]
    assert len({parse_credentials(v)["nonce"] for v in values}) == 1  # type: ignore[index]
    challenge = final(proxy(auth_algorithms=("SHA-256", "MD5")), register())
    values = challenge.get_all("www-authenticate")
    assert [parse_credentials(v)["algorithm"] for v in values] == ["SHA-256", "MD5"]  # type: ignore[index]
    assert len({parse_credentials(v)["nonce"] for v in values}) == 1  # type: ignore[index]


def test_sha256_credentials_are_accepted() -> None:
    p = proxy()
    www = final(p, register()).get_all("www-authenticate")[1]
    ok = final(p, register((
        f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org', algorithm='SHA-256')}",),
        branch="z9hG4bKr2", cseq=2))
    assert ok.status == 200


def test_a_captured_register_cannot_be_replayed() -> None:
    p = proxy()
    www = final(p, register()).get("www-authenticate") or ""
    header = f"Authorization: {credentials(www, 'REGISTER', 'sip:example.org')}"
    assert final(p, register((header,), branch="z9hG4bKr2", cseq=2)).status == 200
    # The same header from somebody else, with another Contact, a second later.
    replay = register((header,), branch="z9hG4bKevil", cseq=3).replace(
        b"<sip:alice@198.51.100.8:5070>", b"<sip:alice@203.0.113.66:5060>")
    p.receive(replay, Address("udp", "203.0.113.66", 5060), PROXY, 1.0)
    answer = parse_message(p.outbox[-1].data)
    p.outbox.clear()
    assert isinstance(answer, Response) and answer.status == 401
    assert "stale=true" in (answer.get("www-authenticate") or "")
    contacts = p.location.lookup("alice@example.org", 1.0)
    assert [b.contact for b in contacts] == ["sip:alice@198.51.100.8:5070"]


def test_the_nonce_count_must_go_up() -> None:
    p = proxy()
    www = final(p, register()).get("www-authenticate") or ""
    for cseq, nc, status in ((2, "00000001", 200), (3, "00000002", 200), (4, "00000002", 401)):
        value = credentials(www, "REGISTER", "sip:example.org", nc=nc)
        got = final(p, register((f"Authorization: {value}",), branch=f"z9hG4bKn{cseq}",
                                cseq=cseq))
        assert got.status == status, nc


def test_credentials_are_bound_to_the_request_uri() -> None:
    p = proxy()
    www = final(p, register()).get("www-authenticate") or ""
    other = credentials(www, "REGISTER", "sip:other.example.org")
    got = final(p, register((f"Authorization: {other}",), branch="z9hG4bKr2", cseq=2))
    assert got.status == 401
    assert p.statistics()["auth:failures"] == 1


def test_a_nonce_is_forgotten_after_its_time() -> None:
    auth = DigestAuth("example.org", dict(USERS), b"k", nonce_ttl=10)
    value = credentials(auth.challenge(0.0), "REGISTER", "sip:example.org")
    verdict = auth.check(value, "REGISTER", "sip:example.org", 11.0)
    assert verdict.user is None and verdict.stale and not verdict.failed


def test_the_nonce_table_is_bounded() -> None:
    auth = DigestAuth("example.org", dict(USERS), b"k", max_nonces=3)
    first = credentials(auth.challenge(0.0), "REGISTER", "sip:example.org")
    for _ in range(3):
        auth.challenge(0.0)
    # Pushed out by newer ones: stale (answered with a fresh nonce), never accepted.
    assert auth.check(first, "REGISTER", "sip:example.org", 0.0).stale
