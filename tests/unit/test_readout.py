"""Read-outs of wire text that is not UTF-8: dialog:list (through the MI encoder and over the
real MI HTTP server), events to every sink type, msgpack snapshots, and the encodings of
`switchboard.readout` themselves.

The dialogs come from the recorded INVITEs in tests/data/readout (a From URI, display name,
Contact and SDP with bytes that are not UTF-8; a Call-ID and From tag with them), relayed and
answered through the sans-IO proxy core. What each edge makes of such a byte is in
`switchboard/readout.py`; logs, metrics and HEP have theirs in test_logs.py, test_metrics.py
and test_hep.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from switchboard.actors.dialog import dialog_info
from switchboard.events.envelope import encode_event
from switchboard.events.sinks import SinkAddress, TcpSink, UdpSink
from switchboard.mi.commands import REGISTRY
from switchboard.mi.dispatch import (
    ENCODE_SLICE,
    dispatch,
    encode_response,
    encode_response_parts,
)
from switchboard.mi.http import MIServer, start_mi_server
from switchboard.mi.registry import CommandContext
from switchboard.readout import json_bytes, json_text, pack, plain_text, unpack
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.dialog import Dialog, DialogStateChanged
from switchboard.sip.operations import BAD_INPUT, Refused
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.refer import parse_replaces
from switchboard.sip.wire import Address

DATA = Path(__file__).resolve().parents[1] / "data" / "readout"
PROXY = Address("udp", "127.0.0.1", 5060)
ALICE = Address("udp", "127.0.0.1", 5061)
BOB = Address("udp", "127.0.0.1", 5062)
BAD_FROM = "invite-bad-utf8-from-uri.sip"
BAD_CALL_ID = "invite-bad-utf8-call-id.sip"
SDP_B = b"v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"r{next(numbers)}"


def answered(name: str, proxy: Proxy | None = None, ack: bool = True) -> Proxy:
    """A proxy with the recorded INVITE `name` from Alice relayed to Bob, answered 200 and
    (when `ack`) ACKed."""
    if proxy is None:
        proxy = Proxy(ProxyConfig(listeners=(PROXY,)), counter())
        CallOps(proxy)
    proxy.track_changes()
    del proxy.outbox[:]
    proxy.receive((DATA / name).read_bytes(), ALICE, PROXY, 100.0)
    relayed = parse_message(proxy.outbox[-1].data)
    assert isinstance(relayed, Request) and relayed.method == "INVITE"
    lines = ["SIP/2.0 200 OK", *[f"Via: {v}" for v in relayed.get_all("via")],
             *[f"Record-Route: {v}" for v in relayed.get_all("record-route")],
             f"From: {relayed.get('from')}", f"To: {relayed.get('to')};tag=bob-tag",
             f"Call-ID: {relayed.get('call-id')}", f"CSeq: {relayed.get('cseq')}",
             "Contact: <sip:bob@127.0.0.1:5062>", "Content-Type: application/sdp",
             f"Content-Length: {len(SDP_B)}"]
    proxy.receive(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + SDP_B,
                  BOB, PROXY, 100.1)
    ok = parse_message(proxy.outbox[-1].data)
    assert isinstance(ok, Response) and ok.status == 200
    if not ack:
        return proxy
    ack = ["ACK sip:bob@127.0.0.1:5062 SIP/2.0",
           f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-ack-{len(proxy.dialogs)}",
           *[f"Route: {v}" for v in reversed(ok.values("record-route"))], "Max-Forwards: 70",
           f"From: {ok.get('from')}", f"To: {ok.get('to')}", f"Call-ID: {ok.get('call-id')}",
           "CSeq: 1 ACK", "Content-Length: 0"]
    proxy.receive(("\r\n".join(ack) + "\r\n\r\n").encode("utf-8", "surrogateescape"),
                  ALICE, PROXY, 100.15)
    assert parse_message(proxy.outbox[-1].data).start_line().startswith("ACK ")
    return proxy


def the_dialog(proxy: Proxy) -> Dialog:
    (dialog,) = [d for d in proxy.dialogs if d.active]
    return dialog


def listed(dialog: Dialog) -> dict[str, Any]:
    return dialog_info(dialog, lambda t: t + 1_767_225_600.0)


# -- the encodings --------------------------------------------------------------------------------


def test_a_wire_byte_is_shown_as_backslash_x_in_json() -> None:
    text = json.dumps({"uri": "sip:jos\udce9\udcff@h", "ok": "é ☎"}, ensure_ascii=False)
    out = json_bytes(text)
    assert out == '{"uri": "sip:jos\\\\xe9\\\\xff@h", "ok": "é ☎"}'.encode()
    assert json.loads(out.decode("utf-8")) == {"uri": "sip:jos\\xe9\\xff@h", "ok": "é ☎"}
    # Text without lone surrogates is plain UTF-8, byte for byte.
    clean = json.dumps({"a": "é\\x41\"\n"}, ensure_ascii=False)
    assert json_bytes(clean) == clean.encode()
    assert json_text(clean) == clean


def test_another_lone_surrogate_is_a_json_escape() -> None:
    # None comes from the parser; a management request can send one as `\ud800`.
    out = json_bytes(json.dumps(["\ud800x\udfff"], ensure_ascii=False))
    assert out == b'["\\ud800x\\udfff"]'
    assert json.loads(out) == ["\ud800x\udfff"]


def test_text_and_json_text_are_valid_utf8_strings() -> None:
    assert plain_text("From: jos\udce9 \ud800 é") == "From: jos\\xe9 \\ud800 é"
    assert plain_text("plain") == "plain"
    line = json_text(json.dumps({"m": "a\udc80"}, ensure_ascii=False))
    assert line == '{"m": "a\\\\x80"}'
    line.encode("utf-8")


def test_msgpack_carries_wire_bytes_as_they_were() -> None:
    value = {"from_uri": "sip:jos\udce9\udcff@h", "sdp": b"s=\xff", "n": [1, "é"]}
    data = pack(value)
    assert b"sip:jos\xe9\xff@h" in data
    assert unpack(data) == value


# -- dialog:list --------------------------------------------------------------------------------


def test_dialog_list_of_a_non_utf8_from_uri_contact_display_and_sdp_is_valid_json() -> None:
    proxy = answered(BAD_FROM)
    dialog = the_dialog(proxy)
    assert dialog.from_uri == "sip:jos\udce9\udcff@127.0.0.1:5061"
    assert dialog.caller.contact == "sip:\udce9\udcff\udcc3@127.0.0.1:5061"
    info = listed(dialog)
    response = {"jsonrpc": "2.0", "result": {"Dialogs": [info]}, "id": 1}
    body = encode_response(response)
    got = json.loads(body.decode("utf-8"))["result"]["Dialogs"][0]
    assert got["from_uri"] == "sip:jos\\xe9\\xff@127.0.0.1:5061"
    assert got["caller_contact"] == "sip:\\xe9\\xff\\xc3@127.0.0.1:5061"
    assert "s=S\ufffd\ufffdssion\r\n" in got["caller_sdp"]  # SDP: decoded with "replace"
    assert got["CALLEES"][0]["callee_contact"] == "sip:bob@127.0.0.1:5062"
    # The long form (slices, as the HTTP server sends a big list) says the same.
    many = {"jsonrpc": "2.0", "result": {"Dialogs": [info] * (ENCODE_SLICE + 1)}, "id": 1}
    parts = asyncio.run(encode_response_parts(many))
    assert len(parts) > 1
    long = json.loads(b"".join(parts).decode("utf-8"))
    assert long["result"]["Dialogs"] == [got] * (ENCODE_SLICE + 1)


def test_a_non_utf8_call_id_and_tag_can_be_looked_up_and_listed() -> None:
    proxy = answered(BAD_CALL_ID)
    dialog = the_dialog(proxy)
    assert dialog.call_id == "call-\udcff\udcfe1@alice"
    api = _ProxyApi(proxy)
    ctx = CommandContext(api=api, registry=REGISTRY)  # type: ignore[arg-type]
    # A client names the Call-ID with JSON escapes, as json.dumps writes it.
    request = {"jsonrpc": "2.0", "method": "dialog:list", "id": 3,
               "params": {"callid": dialog.call_id, "from_tag": dialog.caller.tag}}
    body = asyncio.run(dispatch(json.dumps(request), ctx))
    assert body is not None
    got = json.loads(body.decode("utf-8"))["result"]["Dialog"]
    assert (got["callid"], got["caller_tag"]) == ("call-\\xff\\xfe1@alice", "alice-\\xe9tag")


def test_an_mi_id_that_json_cannot_carry_back_is_an_invalid_request() -> None:
    ctx = CommandContext(api=_ProxyApi(Proxy(ProxyConfig(listeners=(PROXY,)), counter())),  # type: ignore[arg-type]
                         registry=REGISTRY)
    body = asyncio.run(dispatch('{"jsonrpc": "2.0", "method": "uptime", "id": 1e400}', ctx))
    assert body is not None
    assert json.loads(body) == {"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32600, "message": "Invalid Request"}}


class _ProxyApi:
    """The two ControlApi calls dialog:list and statistics:get make, over a sans-IO proxy
    (as `Worker.list_dialogs` does it)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def list_dialogs(self, callid: str | None = None,
                           from_tag: str | None = None) -> list[dict[str, Any]]:
        return [listed(d) for d in self.proxy.dialogs if d.active
                and callid in (None, d.call_id) and from_tag in (None, d.caller.tag)]

    async def statistics(self) -> dict[str, int]:
        return self.proxy.statistics()

    def uptime_seconds(self) -> float:
        return 1.0

    def started_at(self) -> float:
        return 0.0


@pytest.fixture
async def mi_server() -> AsyncIterator[MIServer]:
    proxy = answered(BAD_FROM)
    answered(BAD_CALL_ID, proxy)
    server = await start_mi_server(_ProxyApi(proxy), "127.0.0.1", 0)  # type: ignore[arg-type]
    yield server
    await server.close()


async def test_dialog_list_over_the_mi_http_server_answers_200_with_valid_json(
    mi_server: MIServer,
) -> None:
    answers = {}
    async with aiohttp.ClientSession() as http:
        for method, params in (("dialog:list", {}), ("statistics:get", {"statistics": ["all"]})):
            request = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
            async with http.post(mi_server.url, json=request) as response:
                assert response.status == 200
                answers[method] = json.loads((await response.read()).decode("utf-8"))
    assert answers["statistics:get"]["result"]["dialog:active_dialogs"] == 2
    by_call = {d["callid"]: d for d in answers["dialog:list"]["result"]["Dialogs"]}
    assert by_call["call-1@alice"]["from_uri"] == "sip:jos\\xe9\\xff@127.0.0.1:5061"
    assert by_call["call-\\xff\\xfe1@alice"]["caller_tag"] == "alice-\\xe9tag"


# -- events -------------------------------------------------------------------------------------


def _dialog_events(proxy: Proxy) -> list[tuple[str, dict[str, Any]]]:
    return [("E_DLG_STATE_CHANGED", {"id": e.dialog_id, "callid": e.call_id,
                                     "from_tag": e.from_tag, "to_tag": e.to_tag,
                                     "old_state": e.old_state, "new_state": e.new_state})
            for e in proxy.events if isinstance(e, DialogStateChanged)]


def test_an_event_with_a_non_utf8_call_id_encodes_as_valid_json() -> None:
    events = _dialog_events(answered(BAD_CALL_ID))
    assert [p["new_state"] for _, p in events] == [3, 4]
    payload = encode_event(*events[0])
    params = json.loads(payload.decode("utf-8"))["params"]
    assert (params["callid"], params["from_tag"]) == ("call-\\xff\\xfe1@alice", "alice-\\xe9tag")
    # A Ray worker's batch of events carries the same values through msgpack.
    assert unpack(pack(events)) == [list(e) for e in events]


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait(data)


async def test_every_sink_type_delivers_the_event_as_valid_json() -> None:
    payload = encode_event(*_dialog_events(answered(BAD_CALL_ID))[0])
    loop = asyncio.get_running_loop()
    receiver = _Receiver()
    transport, _ = await loop.create_datagram_endpoint(lambda: receiver,
                                                       local_addr=("127.0.0.1", 0))
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines.put_nowait(await reader.readline())
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    udp = UdpSink(SinkAddress("udp", "127.0.0.1", transport.get_extra_info("sockname")[1]))
    tcp = TcpSink(SinkAddress("tcp", "127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        for sink in (udp, tcp):
            await sink.open()
            sink.send(payload)
        got = [await asyncio.wait_for(receiver.got.get(), 5),
               (await asyncio.wait_for(lines.get(), 5)).rstrip(b"\n")]
    finally:
        await udp.close()
        await tcp.close()
        transport.close()
        server.close()
        await server.wait_closed()
    for data in got:
        assert json.loads(data.decode("utf-8"))["params"]["callid"] == "call-\\xff\\xfe1@alice"


# -- snapshots ----------------------------------------------------------------------------------


def test_a_snapshot_through_msgpack_restores_a_dialog_that_relays_the_same_bytes() -> None:
    proxy = answered(BAD_FROM)
    snapshots, _ = proxy.take_dirty(100.2)
    (snapshot,) = snapshots
    again = unpack(pack(snapshot))
    assert again == snapshot
    fresh = Proxy(ProxyConfig(listeners=(PROXY,)), counter())
    restored = fresh.restore_dialog(again, 100.2)
    assert restored is not None
    original = the_dialog(proxy)
    assert listed(restored)["from_uri"] == listed(original)["from_uri"]
    assert restored.caller.sdp == original.caller.sdp
    # Ending it, the restored proxy sends Alice a BYE to her Contact, From/To as they were.
    fresh.end_dialog(restored.id, 100.3)
    to_alice = [d.data for d in fresh.outbox if d.dest == ALICE]
    assert len(to_alice) == 1
    assert to_alice[0].startswith(b"BYE sip:\xe9\xff\xc3@127.0.0.1:5061 SIP/2.0\r\n")
    assert b"\r\nTo: <sip:jos\xe9\xff@127.0.0.1:5061>;tag=alice-tag\r\n" in to_alice[0]


# -- wire text written back by the core --------------------------------------------------------


def test_an_attended_transfer_escapes_a_non_utf8_call_id_and_tag_as_their_bytes() -> None:
    """Replaces names the other call by its Call-ID and tags as they were on the wire; the
    escaping used to raise UnicodeEncodeError out of the call operation (the flow fuzzer's
    attended transfer with such a byte in the From tag of the call being replaced)."""
    proxy = answered(BAD_FROM)
    answered(BAD_CALL_ID, proxy)
    del proxy.outbox[:]
    proxy.callops.attended_transfer("call-1@alice", "callee", "call-\udcff\udcfe1@alice",
                                    "caller", None, None, None, 101.0)
    (refer,) = proxy.outbox
    assert refer.dest == BOB and refer.data.startswith(b"REFER ")
    assert (b"Refer-To: <sip:alice@127.0.0.1:5061?Replaces=call-%FF%FE1%40alice"
            b"%3Bto-tag%3Dalice-%E9tag%3Bfrom-tag%3Dbob-tag>\r\n") in refer.data
    # Unescaped by the transferee, it names the dialog as the parser reads it.
    (value,) = re.findall(rb"Replaces=([^>]*)>", refer.data)
    replaces = parse_replaces(urllib.parse.unquote_to_bytes(value).decode(
        "utf-8", "surrogateescape"))
    assert (replaces.call_id, replaces.to_tag) == ("call-\udcff\udcfe1@alice", "alice-\udce9tag")


@pytest.mark.parametrize("operation", ["transfer", "hold"])
def test_text_without_bytes_from_a_management_request_is_refused_before_anything_changes(
    operation: str,
) -> None:
    """A lone surrogate that is not an escaped byte (JSON `\\ud800` in a request) has no
    bytes to send: building the REFER or re-INVITE raised inside the core, and the dialog
    answered 491 to every later operation."""
    proxy = answered(BAD_FROM)
    del proxy.outbox[:]
    callops = proxy.callops
    with pytest.raises(Refused) as refused:
        if operation == "transfer":
            callops.transfer("call-1@alice", "caller", "sip:\ud800@127.0.0.1:5063", 101.0)
        else:
            callops.hold("call-1@alice", "caller", "X-Note: \ud800", 101.0)
    assert refused.value.status == BAD_INPUT
    assert proxy.outbox == []
    if operation == "transfer":
        callops.transfer("call-1@alice", "caller", "sip:carol@127.0.0.1:5063", 101.0)
    else:
        callops.hold("call-1@alice", "caller", "X-Note: \udcff", 101.0)
    assert proxy.outbox


# -- what the flow fuzzer found in the core (tests/fuzz/fuzz_flows.py) ---------------------------


def test_an_ack_with_a_non_utf8_branch_is_relayed_statelessly() -> None:
    proxy = Proxy(ProxyConfig(listeners=(PROXY,)), counter())
    proxy.receive((DATA / "ack-bad-utf8-branch.sip").read_bytes(), ALICE, PROXY, 1.0)
    (relayed,) = proxy.outbox
    assert relayed.dest == BOB
    assert b";branch=z9hG4bK\xff\xfe\r\n" in relayed.data


def test_a_stray_response_is_never_sent_to_a_name() -> None:
    proxy = Proxy(ProxyConfig(listeners=(PROXY,)), counter())
    stray = (DATA / "resp-180-stray-via-hostname.sip").read_bytes()
    proxy.receive(stray, Address("udp", "127.0.0.66", 5099), PROXY, 1.0)
    assert [d.dest for d in proxy.outbox] == []
    assert proxy.statistics()["core:drop_replies"] == 1


def test_credentials_that_are_not_ascii_are_a_failed_guess() -> None:
    proxy = Proxy(ProxyConfig(listeners=(PROXY,), auth_users=(("alice", "secret"),)),
                  counter())
    proxy.receive((DATA / "register-auth-non-ascii-nonce.sip").read_bytes(), ALICE, PROXY, 1.0)
    (answer,) = proxy.outbox
    assert answer.data.startswith((b"SIP/2.0 401 ", b"SIP/2.0 403 "))


def test_a_dialog_whose_route_set_does_not_parse_can_still_be_ended() -> None:
    """Found by the flow fuzzer's snapshot check (a restored dialog is ended): the caller's
    route set is the INVITE's Record-Route as written, here `<sip:127.0.0.1:5070;lr`."""
    for end in ("end_dialog", "lifetime"):
        # Alice's ACK would follow that route set too: it stays unacknowledged (state 3).
        proxy = answered("invite-unterminated-record-route.sip", ack=False)
        dialog = the_dialog(proxy)
        if end == "end_dialog":
            assert proxy.end_dialog(dialog.id, 101.0)
        else:
            proxy.handle_timers(100.0 + ProxyConfig(listeners=(PROXY,)).dialog_lifetime + 1)
        assert not dialog.active
        # Bob, whose route set is ours, gets his BYE.
        assert [d.dest for d in proxy.outbox if d.data.startswith(b"BYE ")] == [BOB]
