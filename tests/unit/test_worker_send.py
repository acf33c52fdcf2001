"""The worker's send path: an endpoint that has no way to a destination says so, and the
core hears of it in the same pass (a relayed INVITE answered 480 upstream at once)."""

from __future__ import annotations

from switchboard.actors.worker import Worker
from switchboard.sip import Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import ALICE, PROXY_UDP, counter, invite

PROXY_WS = Address("ws", "127.0.0.1", 8080)


class Recorder:
    """An endpoint that keeps what it sends and reaches nobody when `reachable` is off."""

    def __init__(self, local: Address, reachable: bool) -> None:
        self.local = local
        self.reachable = reachable
        self.sent: list[tuple[bytes, Address]] = []

    def send(self, data: bytes, dest: Address) -> bool:
        if not self.reachable:
            return False
        self.sent.append((data, dest))
        return True

    def close(self) -> None:
        pass


async def test_an_undeliverable_invite_is_answered_480_in_the_same_flush() -> None:
    proxy = Proxy(ProxyConfig(listeners=(PROXY_UDP, PROXY_WS)), counter())
    events: list[tuple[str, dict[str, object]]] = []
    worker = Worker(proxy, CallOps(proxy), lambda name, body: events.append((name, body)))
    udp, ws = Recorder(PROXY_UDP, True), Recorder(PROXY_WS, False)
    worker.add_endpoint(udp)
    worker.add_endpoint(ws)
    try:
        worker.receive(invite(ruri="sip:carol@k2h3.invalid;transport=ws"), ALICE, PROXY_UDP)
        answers = [parse_message(data) for data, dest in udp.sent if dest == ALICE]
        assert [a.status for a in answers if isinstance(a, Response)] == [100, 480]
        assert proxy.outbox == [] and proxy.client_txns == {}
        # The dialog went from unconfirmed (1) to deleted (5), published in the same pass.
        assert [(name, body["old_state"], body["new_state"]) for name, body in events] == [
            ("E_DLG_STATE_CHANGED", 1, 5)]
    finally:
        worker.close()
