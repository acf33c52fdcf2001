"""Bindings registered over a connection go with it (RFC 5626 §5.3, RFC 7118 §6): the
location service drops them when the driver says the connection ended, leaves the user's
bindings over other connections, and answers a request for a user whose every binding went
that way 480 (offline), with no send attempt, until the user registers again or the binding
would have expired."""

from __future__ import annotations

from switchboard.sip import Response
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import (
    ALICE,
    PROXY_TCP,
    PROXY_UDP,
    ROUTE_SECRET,
    Net,
    counter,
    one_response,
    parsed,
    sip_request,
)

PROXY_WS = Address("ws", "127.0.0.1", 8080)
PROXY_WSS = Address("wss", "127.0.0.1", 8443)
BOB_WS = Address("ws", "127.0.0.1", 41001)  # Bob's browser's connection
BOB_WSS = Address("wss", "127.0.0.1", 41002)  # his other browser's
BOB_TCP_CONN = Address("tcp", "127.0.0.1", 42001)  # his desk phone's
WS_CONTACT = "sip:k2h3@k2h3.invalid;transport=ws"
WSS_CONTACT = "sip:p9q8@p9q8.invalid;transport=ws"
TCP_CONTACT = "sip:bob@127.0.0.1:42001;transport=tcp"


def network() -> Net:
    net = Net()
    net.proxy = Proxy(ProxyConfig(listeners=(PROXY_UDP, PROXY_TCP, PROXY_WS, PROXY_WSS),
                                  route_secret=ROUTE_SECRET), counter())
    return net


def register(net: Net, contact: str, source: Address, local: Address, *, n: int,
             expires: int = 600) -> None:
    host = contact.split("@", 1)[1].split(";", 1)[0]
    transport = source.transport.upper()
    data = sip_request("REGISTER", "sip:127.0.0.1", branch=f"z9hG4bKreg{n}",
                       via=f"SIP/2.0/{transport} {host};branch=z9hG4bKreg{n}",
                       from_uri="sip:bob@127.0.0.1", from_tag=f"r{n}",
                       to_uri="sip:bob@127.0.0.1", call_id=f"reg-{n}", contact=contact,
                       extra=[f"Expires: {expires}"])
    assert one_response(net.send(data, source, local), source).status == 200


def call_bob(net: Net, n: int) -> list[tuple[Address, object]]:
    return [(dest, m.status if isinstance(m, Response) else m.method)  # type: ignore[union-attr]
            for dest, m in parsed(net.send(sip_request(
                "INVITE", "sip:bob@127.0.0.1", branch=f"z9hG4bKinv{n}", call_id=f"call-{n}"),
                ALICE))]


def registered(net: Net) -> int:
    return net.stats()["usrloc:registered_contacts"]


def test_a_closed_connection_takes_its_bindings_and_leaves_the_others() -> None:
    net = network()
    register(net, WS_CONTACT, BOB_WS, PROXY_WS, n=1)
    register(net, WSS_CONTACT, BOB_WSS, PROXY_WSS, n=2)
    register(net, TCP_CONTACT, BOB_TCP_CONN, PROXY_TCP, n=3)
    assert registered(net) == 3

    assert net.proxy.location.drop_flow(BOB_WS, net.now) == 1
    assert registered(net) == 2
    contacts = {b.contact for b in net.proxy.location.lookup("bob@127.0.0.1", net.now)}
    assert contacts == {WSS_CONTACT, TCP_CONTACT}
    # A connection with nothing registered over it, or one already dropped: nothing goes.
    assert net.proxy.location.drop_flow(Address("ws", "127.0.0.1", 49999), net.now) == 0
    assert net.proxy.location.drop_flow(BOB_WS, net.now) == 0
    # Bob is still reachable over the connections he has.
    out = call_bob(net, 1)
    assert out[0] == (ALICE, 100) and out[1][1] == "INVITE" and out[1][0] != ALICE


def test_a_user_whose_connections_all_went_is_offline_480_without_a_send() -> None:
    net = network()
    register(net, WS_CONTACT, BOB_WS, PROXY_WS, n=1)
    register(net, TCP_CONTACT, BOB_TCP_CONN, PROXY_TCP, n=2)
    net.proxy.location.drop_flow(BOB_WS, net.now)
    net.proxy.location.drop_flow(BOB_TCP_CONN, net.now)
    assert registered(net) == 0
    assert call_bob(net, 1) == [(ALICE, 100), (ALICE, 480)]
    assert net.proxy.client_txns == {}  # nothing was sent toward Bob


def test_offline_ends_when_the_binding_would_have_expired_or_the_user_registers() -> None:
    net = network()
    register(net, WS_CONTACT, BOB_WS, PROXY_WS, n=1, expires=600)
    net.proxy.location.drop_flow(BOB_WS, net.now)
    net.now = 599.0
    assert call_bob(net, 1)[-1] == (ALICE, 480)
    net.now = 601.0
    assert call_bob(net, 2)[-1] == (ALICE, 404)  # unknown again, as never registered

    register(net, WS_CONTACT, BOB_WS, PROXY_WS, n=2, expires=600)
    net.proxy.location.drop_flow(BOB_WS, net.now)
    assert call_bob(net, 3)[-1] == (ALICE, 480)
    # Back on a new connection: reached over it.
    new_conn = Address("ws", "127.0.0.1", 41003)
    register(net, WS_CONTACT, new_conn, PROXY_WS, n=3)
    out = call_bob(net, 4)
    assert out[1] == (new_conn, "INVITE")


def test_a_udp_source_is_no_connection() -> None:
    net = network()
    bob_udp = Address("udp", "127.0.0.1", 5062)
    register(net, "sip:bob@127.0.0.1:5062", bob_udp, PROXY_UDP, n=1)
    assert net.proxy.location.drop_flow(bob_udp, net.now) == 0
    assert registered(net) == 1


def test_the_flow_index_forgets_connections_whose_bindings_moved_on() -> None:
    """Bindings re-registered over new connections whose old ones never said they ended (a
    shared port's other worker saw that): the index of connections stays within a bound,
    and a connection that does end still takes exactly its bindings."""
    net = network()
    users = 40
    for rounds in range(10):
        for user in range(users):
            conn = Address("tcp", "127.0.0.1", 20000 + rounds * users + user)
            data = sip_request(
                "REGISTER", "sip:127.0.0.1", branch=f"z9hG4bKr{rounds}u{user}",
                via=f"SIP/2.0/TCP 127.0.0.1:{conn.port};branch=z9hG4bKr{rounds}u{user}",
                from_uri=f"sip:u{user}@127.0.0.1", from_tag=f"r{rounds}",
                to_uri=f"sip:u{user}@127.0.0.1", call_id=f"reg-{rounds}-{user}",
                contact=f"sip:u{user}@u{user}.invalid;transport=tcp", extra=["Expires: 600"])
            assert one_response(net.send(data, conn, PROXY_TCP), conn).status == 200
    assert registered(net) == users
    assert len(net.proxy.location._by_flow) <= 2 * users + 64
    stale = Address("tcp", "127.0.0.1", 20000)  # round 0's: its binding moved on
    assert net.proxy.location.drop_flow(stale, net.now) == 0
    last = Address("tcp", "127.0.0.1", 20000 + 9 * users + 7)
    assert net.proxy.location.drop_flow(last, net.now) == 1
    assert registered(net) == users - 1
    assert net.proxy.location.lookup("u7@127.0.0.1", net.now) == []


def test_a_tcp_contact_naming_a_listening_address_of_its_own_outlives_its_connection() -> None:
    """A desk phone that registers over TCP a Contact with its own listening port (not the
    connection's): the proxy can open a new connection to it, so its binding stays when the
    connection ends (as Kamailio's and OpenSIPS's registrars keep it by default)."""
    net = network()
    listening = "sip:bob@127.0.0.1:5070;transport=tcp"
    register(net, listening, BOB_TCP_CONN, PROXY_TCP, n=1)
    assert net.proxy.location.drop_flow(BOB_TCP_CONN, net.now) == 0
    assert registered(net) == 1
