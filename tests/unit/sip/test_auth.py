"""Digest authentication (RFC 2617 / RFC 3261 §22) in the registrar and for calls from
untrusted sources. The client side is computed here independently of `sip/auth.py`."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from unit.sip.test_proxy import invite, sip_request

from switchboard.sip import Response, parse_message
from switchboard.sip.auth import DigestAuth, parse_credentials
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address

PROXY = Address("udp", "192.0.2.10", 5060)
ALICE = Address("udp", "198.51.100.8", 5070)
USERS = (("alice", "s3cret"),)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def credentials(challenge: str, method: str, uri: str, user: str = "alice",
                password: str = "s3cret", nc: str = "00000001") -> str:
    params = parse_credentials(challenge)
    assert params is not None
    realm, nonce = params["realm"], params["nonce"]
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc}:abc:auth:{ha2}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop=auth, nc={nc}, cnonce="abc", algorithm=MD5')


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
    assert mine.check(value, "REGISTER", 0.0).user is None
    assert theirs.check(value, "REGISTER", 0.0).user == "alice"
