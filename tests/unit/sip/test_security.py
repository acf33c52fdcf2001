"""What an untrusted source can and cannot make the proxy core do: no relay on a forged To
tag or a preloaded Route, every new request challenged with one answer for every user, wrong
passwords counted and their source banned. Addresses are outside loopback, so only the
networks named in each test are trusted. Nothing here touches a socket."""

from __future__ import annotations

import itertools

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.guard import AuthFailed, GuardSettings
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.auth import credentials
from tests.unit.kit.proxy import invite, reply, signed, sip_request

PROXY = Address("udp", "192.0.2.10", 5060)
ATTACKER = Address("udp", "203.0.113.66", 5060)
ALICE = Address("udp", "198.51.100.8", 5070)
CARRIER = Address("udp", "198.51.100.20", 5060)  # trusted in these tests
OUTSIDE = "sip:0044123@198.51.100.99:5060"  # nobody of ours: relaying there is toll fraud
OUR_RR = "<sip:192.0.2.10:5060;lr>"
SECRET = "s3cret-route-key"


def proxy(**config: object) -> Proxy:
    numbers = itertools.count(1)
    config.setdefault("trusted", ("198.51.100.20/32",))
    config.setdefault("route_secret", SECRET)
    return Proxy(ProxyConfig(listeners=(PROXY,), domains=("example.org",),  # type: ignore[arg-type]
                             **config), lambda: f"{next(numbers):08x}")


def send(p: Proxy, data: bytes, source: Address, now: float = 0.0) -> list[tuple[Address, Request | Response]]:
    p.receive(data, source, PROXY, now)
    out = [(d.dest, parse_message(d.data)) for d in p.outbox]
    p.outbox.clear()
    return out


def finals(out: list[tuple[Address, Request | Response]]) -> list[int]:
    return [m.status for _, m in out if isinstance(m, Response) and m.status >= 200]


def relayed(out: list[tuple[Address, Request | Response]]) -> list[Request]:
    return [m for _, m in out if isinstance(m, Request)]


def via(source: Address, branch: str) -> str:
    return f"SIP/2.0/UDP {source.host}:{source.port};branch={branch}"


# -- no relay without a dialog or a route we wrote ------------------------------------------------


def test_a_forged_to_tag_does_not_relay_toward_the_outside() -> None:
    p = proxy()
    for routes in ((), (OUR_RR,)):  # the same with a Route naming the proxy itself
        forged = invite(ruri=OUTSIDE, to_tag="made-up", routes=routes,
                        via=via(ATTACKER, f"z9hG4bKf{len(routes)}"))
        out = send(p, forged, ATTACKER)
        assert relayed(out) == []
        assert finals(out) == [481]
    assert p.statistics()["core:unknown_dialog_requests"] == 2


def test_a_forged_to_tag_does_not_reach_a_registered_user() -> None:
    p = proxy()
    p.location.register(parse_message(sip_request(  # type: ignore[arg-type]
        "REGISTER", "sip:example.org", branch="z9hG4bKr", from_uri="sip:alice@example.org",
        to_uri="sip:alice@example.org", contact="sip:alice@198.51.100.8:5070",
        extra=("Expires: 600",))), "alice@example.org", ALICE, PROXY, 0.0, "t")
    out = send(p, invite(ruri="sip:alice@example.org", to_tag="made-up",
                         via=via(ATTACKER, "z9hG4bKf")), ATTACKER)
    assert relayed(out) == [] and finals(out) == [481]


def test_a_forged_ack_is_dropped() -> None:
    p = proxy()
    ack = sip_request("ACK", OUTSIDE, branch="z9hG4bKack", to_tag="made-up", contact=None,
                      via=via(ATTACKER, "z9hG4bKack"))
    assert send(p, ack, ATTACKER) == []


def test_a_preloaded_route_is_no_way_around_the_relay_policy() -> None:
    p = proxy()
    message = sip_request("MESSAGE", "sip:bob@example.org", branch="z9hG4bKm",
                          routes=("<sip:198.51.100.99:5060;lr>",), via=via(ATTACKER, "z9hG4bKm"))
    out = send(p, message, ATTACKER)
    assert relayed(out) == [] and finals(out) == [403]
    # From a trusted network the same request is relayed along its Route.
    out = send(p, message.replace(b"203.0.113.66", b"198.51.100.20"), CARRIER)
    assert [str(m.uri) for m in relayed(out)] == ["sip:bob@example.org"]


def call_through(p: Proxy) -> Request:
    """A call from the trusted carrier to Alice at an untrusted address, answered: the
    INVITE as Alice got it."""
    inv = invite(ruri="sip:alice@198.51.100.8:5070", from_uri="sip:carol@example.net",
                 via=via(CARRIER, "z9hG4bKc1"))
    at_alice = relayed(send(p, inv, CARRIER))[0]
    send(p, reply(at_alice, 200, to_tag="alice-tag2", contact="sip:alice@198.51.100.8:5070"),
         ALICE)
    return at_alice


CALLER_CONTACT = "sip:alice@127.0.0.1:5061"  # the caller's Contact (sip_request's default)


def in_dialog(method: str, ruri: str, rr: str, branch: str) -> bytes:
    """A request from the callee (Alice, untrusted) in the call `call_through` made."""
    return sip_request(method, ruri, branch=branch, cseq=9, from_tag="alice-tag2",
                       to_tag="alice-tag", from_uri="sip:alice@x", to_uri="sip:carol@example.net",
                       routes=(rr,), contact=None, via=via(ALICE, branch))


def test_the_untrusted_party_of_a_known_dialog_may_send_in_it_to_the_other_party_only() -> None:
    p = proxy()
    at_alice = call_through(p)
    rr = signed(OUR_RR, tag="alice-tag", target=CALLER_CONTACT, secret=SECRET)
    assert at_alice.get_all("record-route") == [rr]
    # Aimed at a premium number with the real call's identity: refused.
    for method in ("INVITE", "MESSAGE"):
        out = send(p, in_dialog(method, OUTSIDE, rr, f"z9hG4bK{method}"), ALICE)
        assert relayed(out) == [] and finals(out) == [403], method
    out = send(p, in_dialog("BYE", CALLER_CONTACT, rr, "z9hG4bKb"), ALICE)
    assert [m.method for m in relayed(out)] == ["BYE"]


def test_a_route_we_signed_relays_after_the_dialog_is_forgotten() -> None:
    at_alice = call_through(proxy())
    rr = at_alice.get_all("record-route")[0]
    restarted = proxy()  # same route secret, empty dialog table
    bye = in_dialog("BYE", CALLER_CONTACT, rr, "z9hG4bKb")
    assert [m.method for m in relayed(send(restarted, bye, ALICE))] == ["BYE"]
    # Another Call-ID, another target, or another secret: the signature does not fit.
    other_call = bye.replace(b"call-1@alice", b"call-2@evil").replace(b"z9hG4bKb", b"z9hG4bKc")
    assert finals(send(restarted, other_call, ALICE)) == [481]
    elsewhere = in_dialog("INVITE", OUTSIDE, rr, "z9hG4bKd")
    assert finals(send(restarted, elsewhere, ALICE)) == [481]
    stranger = proxy(route_secret="another")
    assert finals(send(stranger, bye, ALICE)) == [481]


def test_the_callers_route_is_signed_for_the_callees_contact() -> None:
    """Both parties untrusted: the callee's route set (in the INVITE) is signed for the
    caller's Contact, the caller's (in the answers, rewritten) for the callee's."""
    p = proxy(trusted=())
    p.location.register(parse_message(sip_request(  # type: ignore[arg-type]
        "REGISTER", "sip:example.org", branch="z9hG4bKr", from_uri="sip:alice@example.org",
        to_uri="sip:alice@example.org", contact="sip:alice@198.51.100.8:5070",
        extra=("Expires: 600",))), "alice@example.org", ALICE, PROXY, 0.0, "t")
    inv = invite(ruri="sip:alice@example.org", from_uri="sip:carol@example.net",
                 from_tag="carol-tag", contact="sip:carol@203.0.113.66:5060",
                 via=via(ATTACKER, "z9hG4bKc1"))
    at_alice = relayed(send(p, inv, ATTACKER))[0]
    assert at_alice.get_all("record-route") == [
        signed(OUR_RR, tag="carol-tag", target="sip:carol@203.0.113.66:5060", secret=SECRET)]
    for status in (180, 200):
        out = send(p, reply(at_alice, status, to_tag="alice-tag2",
                            contact="sip:alice@198.51.100.8:5070"), ALICE)
        (answer,) = [m for _, m in out if isinstance(m, Response)]
        assert answer.get_all("record-route") == [signed(
            OUR_RR, tag="carol-tag", target="sip:alice@198.51.100.8:5070", secret=SECRET)]


def test_a_trusted_next_hop_gets_an_unsigned_route() -> None:
    p = proxy()
    inv = invite(ruri="sip:bob@198.51.100.20:5060", via=via(ALICE, "z9hG4bKt"))
    (fwd,) = relayed(send(p, inv, Address("udp", "198.51.100.20", 5070)))
    assert fwd.get_all("record-route") == [OUR_RR]


# -- every new request is challenged, and every user answered alike -------------------------------


def authed_proxy(**config: object) -> Proxy:
    config.setdefault("auth_users", (("alice", "pw-a"), ("bob", "pw-b")))
    return proxy(**config)


def register_alice(p: Proxy) -> None:
    data = sip_request("REGISTER", "sip:example.org", branch="z9hG4bKr1",
                       from_uri="sip:alice@example.org", to_uri="sip:alice@example.org",
                       contact="sip:alice@198.51.100.8:5070", extra=("Expires: 600",),
                       via=via(ALICE, "z9hG4bKr1"))
    www = send(p, data, ALICE)[-1][1].get("www-authenticate") or ""
    value = credentials(www, "REGISTER", "sip:example.org", password="pw-a")
    ok = data.replace(b"z9hG4bKr1", b"z9hG4bKr2").replace(b"CSeq: 1", b"CSeq: 2").replace(
        b"Expires: 600", f"Expires: 600\r\nAuthorization: {value}".encode())
    assert finals(send(p, ok, ALICE)) == [200]


def shape(message: Request | Response) -> tuple[int, str, list[str]]:
    assert isinstance(message, Response)
    return message.status, message.reason, [key for key, _, _ in message.headers]


def test_every_method_gets_one_answer_for_registered_offline_and_unknown_users() -> None:
    p = authed_proxy()
    register_alice(p)
    for method in ("INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE", "REFER", "INFO"):
        answers = []
        for n, user in enumerate(("alice", "bob", "nobody")):
            branch = f"z9hG4bK{method}{n}"
            data = sip_request(method, f"sip:{user}@example.org", branch=branch,
                               to_uri=f"sip:{user}@example.org", via=via(ATTACKER, branch),
                               extra=("Event: presence",) if method == "SUBSCRIBE" else ())
            out = send(p, data, ATTACKER)
            assert relayed(out) == [], (method, user)
            answers.append(shape(out[-1][1]))
        assert answers[0][0] == 407, method
        assert answers[0] == answers[1] == answers[2], method


def test_an_options_ping_of_the_proxy_itself_is_answered() -> None:
    p = authed_proxy()
    out = send(p, sip_request("OPTIONS", "sip:192.0.2.10:5060", branch="z9hG4bKo",
                              via=via(ATTACKER, "z9hG4bKo")), ATTACKER)
    assert finals(out) == [200]


def test_methods_left_out_of_auth_methods_are_not_challenged() -> None:
    p = authed_proxy(auth_methods=("INVITE",))
    out = send(p, sip_request("MESSAGE", "sip:nobody@example.org", branch="z9hG4bKm",
                              via=via(ATTACKER, "z9hG4bKm")), ATTACKER)
    assert finals(out) == [404]


def test_an_authenticated_user_may_call_out() -> None:
    p = authed_proxy()
    first = send(p, invite(ruri=OUTSIDE, via=via(ALICE, "z9hG4bKo1")), ALICE)
    challenge = first[-1][1].get("proxy-authenticate") or ""
    value = credentials(challenge, "INVITE", OUTSIDE, password="pw-a")
    out = send(p, invite(ruri=OUTSIDE, via=via(ALICE, "z9hG4bKo2"), cseq=2,
                         extra=[f"Proxy-Authorization: {value}"]), ALICE)
    (fwd,) = relayed(out)
    assert fwd.get("proxy-authorization") is None  # our credentials end here


# -- wrong passwords are counted, and their source banned --------------------------------------------


def guess(p: Proxy, source: Address, n: int, password: str = "wrong", now: float = 0.0,
          user: str = "alice") -> list[tuple[Address, Request | Response]]:
    """One REGISTER with credentials (a fresh challenge first, as svcrack does)."""
    branch = f"z9hG4bKg{source.host}{n}"
    data = sip_request("REGISTER", "sip:example.org", branch=branch, cseq=2 * n,
                       from_uri=f"sip:{user}@example.org", to_uri=f"sip:{user}@example.org",
                       contact=f"sip:{user}@{source.host}", via=via(source, branch))
    out = send(p, data, source, now)
    if not out:
        return out
    www = out[-1][1].get("www-authenticate") or ""
    value = credentials(www, "REGISTER", "sip:example.org", user=user, password=password)
    again = data.replace(branch.encode(), f"{branch}x".encode()).replace(
        f"CSeq: {2 * n} ".encode(), f"CSeq: {2 * n + 1} ".encode()).replace(
        b"Content-Length", f"Authorization: {value}\r\nContent-Length".encode())
    return send(p, again, source, now)


def test_a_guessing_source_is_banned_after_five_failures_and_others_are_not() -> None:
    p = authed_proxy()
    answered = [bool(guess(p, ATTACKER, n)) for n in range(1, 9)]
    assert answered == [True] * 4 + [False] * 4  # the fifth failure bans, unanswered
    assert guess(p, ATTACKER, 9, password="pw-a") == []  # even the right password now
    stats = p.statistics()
    assert stats["auth:failures"] == 5 and stats["auth:bans"] == 1
    assert stats["auth:banned_drops"] >= 4
    assert p.security[-1] == AuthFailed("203.0.113.66", "alice", "REGISTER", True)
    assert [f.banned for f in p.security] == [False] * 4 + [True]
    # Alice, from her own address, is untouched.
    assert finals(guess(p, ALICE, 1, password="pw-a")) == [200]


def test_a_ban_ends_after_its_time() -> None:
    p = authed_proxy(auth_guard=GuardSettings(max_failures=2, ban_time=60.0))
    for n in (1, 2):
        guess(p, ATTACKER, n)
    assert guess(p, ATTACKER, 3, now=59.0) == []
    assert finals(guess(p, ATTACKER, 4, password="pw-a", now=61.0)) == [200]


def test_a_user_guessed_at_from_many_sources_is_protected() -> None:
    p = authed_proxy(auth_guard=GuardSettings(max_failures=5, user_max_failures=6))
    sources = [Address("udp", f"203.0.113.{i}", 5060) for i in range(1, 5)]
    for n, source in enumerate(sources * 2):  # two guesses each: under the per-source limit
        guess(p, source, n + 1)
    assert p.statistics()["auth:bans"] == 2  # the 7th and 8th failures for alice
    assert guess(p, sources[3], 20) == []


def test_a_trusted_source_is_counted_but_never_banned() -> None:
    p = authed_proxy()
    for n in range(1, 8):
        assert guess(p, CARRIER, n)
    assert p.statistics()["auth:failures"] == 7
    assert p.statistics().get("auth:bans", 0) == 0


def test_no_credentials_at_all_is_not_a_failure() -> None:
    p = authed_proxy()
    for n in range(10):
        out = send(p, sip_request("MESSAGE", "sip:alice@example.org", branch=f"z9hG4bKq{n}",
                                  via=via(ATTACKER, f"z9hG4bKq{n}")), ATTACKER)
        assert finals(out) == [407]
    assert p.statistics().get("auth:failures", 0) == 0
