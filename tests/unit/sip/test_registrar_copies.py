"""A location table's changes, told to `on_change`, and another worker's copy that applies
them (`Location.apply`, `Location.table`): what the workers of a node that share one address
keep in step (`cluster/bindings.py`)."""

from __future__ import annotations

from switchboard.sip import Request, parse_message
from switchboard.sip.registrar import BindingChange, Location
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import PROXY_TCP, PROXY_UDP, sip_request

KEY = "bob@127.0.0.1"
BOB_UDP = Address("udp", "127.0.0.1", 5062)
BOB_CONN = Address("tcp", "127.0.0.1", 42001)  # his phone's connection
UDP_CONTACT = "sip:bob@127.0.0.1:5062"
FLOW_CONTACT = "sip:k2h3@k2h3.invalid;transport=tcp"


def register(contact: str, *, call_id: str = "reg-1", cseq: int = 1,
             expires: int = 600) -> Request:
    msg = parse_message(sip_request(
        "REGISTER", "sip:127.0.0.1", branch=f"z9hG4bK{call_id}{cseq}",
        from_uri="sip:bob@127.0.0.1", to_uri="sip:bob@127.0.0.1", call_id=call_id, cseq=cseq,
        contact=contact, extra=[f"Expires: {expires}"]))
    assert isinstance(msg, Request)
    return msg


class Told(list[BindingChange]):
    def __call__(self, change: BindingChange) -> None:
        self.append(change)


def test_every_change_a_register_makes_is_told() -> None:
    location, told = Location(), Told()
    location.on_change = told
    location.register(register(UDP_CONTACT), KEY, BOB_UDP, PROXY_UDP, 10.0, "t1")
    location.register(register(UDP_CONTACT, cseq=2, expires=300), KEY, BOB_UDP, PROXY_UDP,
                      20.0, "t2")
    location.register(register(FLOW_CONTACT, call_id="reg-2"), KEY, BOB_CONN, PROXY_TCP,
                      20.0, "t3")
    location.register(register(UDP_CONTACT, cseq=3, expires=0), KEY, BOB_UDP, PROXY_UDP,
                      30.0, "t4")
    assert [(c.contact, c.expires_in, c.cseq, c.reached_only_over) for c in told] == [
        (UDP_CONTACT, 600.0, 1, False),   # added
        (UDP_CONTACT, 300.0, 2, False),   # refreshed
        (FLOW_CONTACT, 600.0, 1, True),   # reached over its connection only
        (UDP_CONTACT, 0.0, 3, False),     # removed
    ]
    assert told[2].source == BOB_CONN and told[2].local == PROXY_TCP
    assert all(c.key == KEY and c.origin == -1 for c in told)
    wildcard = parse_message(sip_request(
        "REGISTER", "sip:127.0.0.1", branch="z9hG4bKstar", from_uri="sip:bob@127.0.0.1",
        to_uri="sip:bob@127.0.0.1", call_id="reg-2", cseq=2, contact=None,
        extra=["Contact: *", "Expires: 0"]))
    assert isinstance(wildcard, Request)
    location.register(wildcard, KEY, BOB_CONN, PROXY_TCP, 40.0, "t5")
    assert told[-1].contact == "*" and told[-1].expires_in == 0
    # Removing a contact that is not there changes nothing, and tells nothing.
    location.register(register(UDP_CONTACT, cseq=4, expires=0), KEY, BOB_UDP, PROXY_UDP,
                      50.0, "t6")
    assert len(told) == 5


def copy_of(location: Location, now: float, origin: int = 0) -> Location:
    """Another worker's copy, kept by applying what `location` tells."""
    copy = Location()

    def apply(change: BindingChange) -> None:
        copy.apply(BindingChange(change.key, change.contact, change.expires_in,
                                 change.call_id, change.cseq, change.source, change.local,
                                 change.q, change.reached_only_over, origin), now)

    location.on_change = apply
    return copy


def test_a_copy_follows_additions_refreshes_and_removals() -> None:
    here = Location()
    copy = copy_of(here, 10.0)
    here.register(register(UDP_CONTACT), KEY, BOB_UDP, PROXY_UDP, 10.0, "t1")
    [binding] = copy.lookup(KEY, 10.0)
    assert (binding.contact, binding.expires_at, binding.source) == (UDP_CONTACT, 610.0,
                                                                     BOB_UDP)
    here.register(register(UDP_CONTACT, cseq=2, expires=60), KEY, BOB_UDP, PROXY_UDP, 10.0,
                  "t2")
    assert [b.expires_at for b in copy.lookup(KEY, 10.0)] == [70.0]
    # It expires in the copy when it does here: no change needs telling.
    assert copy.lookup(KEY, 69.0) and not copy.lookup(KEY, 71.0)
    here.register(register(UDP_CONTACT, cseq=3), KEY, BOB_UDP, PROXY_UDP, 10.0, "t3")
    here.register(register(UDP_CONTACT, call_id="other", expires=0), KEY, BOB_UDP,
                  PROXY_UDP, 10.0, "t4")
    assert copy.lookup(KEY, 10.0) == [] and here.lookup(KEY, 10.0) == []


def test_a_change_older_than_the_copy_is_ignored() -> None:
    copy = Location()
    newer = BindingChange(KEY, UDP_CONTACT, 600.0, "reg-1", 5, BOB_UDP, PROXY_UDP, origin=1)
    older = BindingChange(KEY, UDP_CONTACT, 0.0, "reg-1", 4, BOB_UDP, PROXY_UDP, origin=1)
    copy.apply(newer, 0.0)
    copy.apply(older, 0.0)  # e.g. out of a table sent before the refresh
    assert [b.cseq for b in copy.lookup(KEY, 0.0)] == [5]
    # Another registration (another Call-ID) is not ordered against it: it applies.
    copy.apply(BindingChange(KEY, UDP_CONTACT, 0.0, "reg-9", 1, BOB_UDP, PROXY_UDP), 0.0)
    assert copy.lookup(KEY, 0.0) == []


def test_copies_are_not_counted_where_they_are_kept() -> None:
    """Each worker counts what it registered, so the node's sum counts each binding once."""
    here = Location()
    copy = copy_of(here, 0.0, origin=3)
    here.register(register(UDP_CONTACT), KEY, BOB_UDP, PROXY_UDP, 0.0, "t1")
    assert (len(here), len(copy)) == (1, 0)
    # Refreshed through the worker that kept the copy: now it counts there.
    copy.register(register(UDP_CONTACT, cseq=2), KEY, BOB_UDP, PROXY_UDP, 0.0, "t2")
    assert len(copy) == 1


def test_a_copy_drops_what_was_registered_over_a_connection_when_it_ends() -> None:
    here = Location()
    copy = copy_of(here, 0.0)
    here.register(register(FLOW_CONTACT), KEY, BOB_CONN, PROXY_TCP, 0.0, "t1")
    here.register(register(UDP_CONTACT, call_id="reg-2"), KEY, BOB_UDP, PROXY_UDP, 0.0, "t2")
    here.register(register(UDP_CONTACT, call_id="reg-2", cseq=2, expires=0), KEY, BOB_UDP,
                  PROXY_UDP, 0.0, "t3")
    assert [b.contact for b in copy.lookup(KEY, 5.0)] == [FLOW_CONTACT]
    assert copy.drop_flow(BOB_CONN, 5.0) == 1
    assert copy.lookup(KEY, 5.0) == []
    assert copy.unreachable(KEY, 5.0)  # offline (480), not unknown


def test_the_table_is_every_live_binding_with_what_it_has_left() -> None:
    here = Location()
    here.register(register(UDP_CONTACT, expires=60), KEY, BOB_UDP, PROXY_UDP, 0.0, "t1")
    here.register(register(FLOW_CONTACT, call_id="reg-2"), KEY, BOB_CONN, PROXY_TCP, 0.0,
                  "t2")
    here.apply(BindingChange("carol@127.0.0.1", "sip:carol@127.0.0.1:5070", 100.0, "c", 1,
                             BOB_UDP, PROXY_UDP, origin=2), 0.0)
    table = here.table(30.0)
    assert sorted((c.key, c.contact, c.expires_in, c.reached_only_over, c.origin)
                  for c in table) == [
        ("bob@127.0.0.1", UDP_CONTACT, 30.0, False, -1),
        ("bob@127.0.0.1", FLOW_CONTACT, 570.0, True, -1),
        ("carol@127.0.0.1", "sip:carol@127.0.0.1:5070", 70.0, False, 2),
    ]
    fresh = Location()
    for change in table:
        fresh.apply(change, 100.0)
    assert [b.expires_at for b in fresh.lookup(KEY, 100.0)] == [670.0, 130.0]
    assert fresh.drop_flow(BOB_CONN, 100.0) == 1  # still known as reached over it only
    assert here.table(61.0) and all(c.contact != UDP_CONTACT for c in here.table(61.0))
