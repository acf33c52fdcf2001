"""Collect switchboard's events as a datagram subscriber (``--event-datagram udp:IP:PORT``).

``EventCollector`` binds a UDP socket on a free 127.0.0.1 port and, on a background thread,
decodes every datagram as a JSON-RPC notification (``{"jsonrpc": "2.0", "method": NAME,
"params": {...}}``), keeping them in arrival order. Tests wait for one with
:meth:`EventCollector.wait_for` and read one call's stream with :meth:`EventCollector.sequence`.

Example::

    with EventCollector() as events:
        server = switchboard_server("--event-datagram", events.socket)
        ...
        events.wait_for("E_CALL_HOLD", lambda p: p["state"] == "ok")
        assert events.sequence("E_CALL_HOLD", call_id) == [...]

Datagrams that are not JSON-RPC notifications are kept in ``junk`` (a test can assert
there are none). Nothing here knows about SIP or about switchboard's internals.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.ports import HOST
from tests.support.udp import DatagramReader

DEFAULT_TIMEOUT = 15.0

Params = dict[str, Any]


@dataclass(frozen=True)
class Notification:
    """One event as received: its method (event name), params and arrival time."""

    method: str
    params: Params
    received: float  # time.monotonic() on arrival


class EventCollector(DatagramReader):
    """A UDP event subscriber on 127.0.0.1: every notification, in arrival order."""

    def __init__(self, host: str = HOST) -> None:
        self._cond = threading.Condition()
        self._items: list[Notification] = []
        self.junk: list[bytes] = []
        super().__init__(host, "events")

    @property
    def socket(self) -> str:
        """The sink string for ``--event-datagram`` / ``evi:subscribe``."""
        return f"udp:{self.host}:{self.port}"

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        item = _decode(data)
        with self._cond:
            if item is None:
                self.junk.append(data)
            else:
                self._items.append(item)
            self._cond.notify_all()

    # -- reading ---------------------------------------------------------------

    def all(self, method: str | None = None) -> list[Notification]:
        """Snapshot of every notification so far (only ``method``'s if given)."""
        with self._cond:
            return [n for n in self._items if method is None or n.method == method]

    def params(
        self, method: str, predicate: Callable[[Params], bool] | None = None
    ) -> list[Params]:
        """The params of every ``method`` notification so far (matching ``predicate``)."""
        return [n.params for n in self.all(method) if predicate is None or predicate(n.params)]

    def sequence(self, method: str, callid: str, *keys: str) -> list[Any]:
        """One call's stream of ``method``, in arrival order.

        Without ``keys`` the full params dicts; with ``keys`` a tuple of those fields per
        event (handy for exact comparisons: ``sequence("E_CALL_HOLD", cid, "leg", "state")``).
        """
        items = self.params(method, lambda p: p.get("callid") == callid)
        if not keys:
            return items
        return [tuple(p.get(k) for k in keys) for p in items]

    def wait_for(
        self,
        method: str,
        predicate: Callable[[Params], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        count: int = 1,
    ) -> Params:
        """Wait until ``count`` notifications ``method`` match ``predicate``; return the last
        one's params.

        Notifications received before the call count (no race with the action that causes
        them). Raises AssertionError with what did arrive on timeout.
        """
        return self.wait_for_notification(method, predicate, timeout, count).params

    def wait_for_notification(self, method: str, predicate: Callable[[Params], bool] | None,
                              timeout: float, count: int = 1) -> Notification:
        """`wait_for`, returning the notification itself (with its arrival time)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [
                    n
                    for n in self._items
                    if n.method == method and (predicate is None or predicate(n.params))
                ]
                if len(hits) >= count:
                    return hits[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{count} x {method} matching the predicate not received within "
                        f"{timeout:g} s (got {len(hits)}); received so far:\n{self.describe()}"
                    )
                self._cond.wait(remaining)

    def assert_quiet(
        self, method: str, predicate: Callable[[Params], bool] | None = None, within: float = 1.0
    ) -> None:
        """Fail if a (further) ``method`` notification matching ``predicate`` arrives within
        ``within`` s from now."""
        before = len(self.params(method, predicate))
        time.sleep(within)
        after = self.params(method, predicate)
        assert len(after) == before, (
            f"unexpected {method} after the expected sequence: {after[before:]}\n{self.describe()}"
        )

    def describe(self, method: str | None = None) -> str:
        """Every notification received so far, one per line, for failure messages."""
        lines = [f"  {n.method} {json.dumps(n.params, sort_keys=True)}" for n in self.all(method)]
        if self.junk:
            lines += [f"  [junk] {d[:200]!r}" for d in self.junk]
        return "\n".join(lines) if lines else "  (nothing)"


def _decode(data: bytes) -> Notification | None:
    try:
        msg = json.loads(data)
    except ValueError:
        return None
    if (
        not isinstance(msg, dict)
        or msg.get("jsonrpc") != "2.0"
        or not isinstance(msg.get("method"), str)
        or "id" in msg
    ):
        return None
    params = msg.get("params", {})
    if not isinstance(params, dict):
        return None
    return Notification(msg["method"], params, time.monotonic())


@contextlib.contextmanager
def collecting() -> Iterator[EventCollector]:
    """A started EventCollector, closed on exit; everything it received is printed then
    (pytest shows that captured output only when the test failed)."""
    collector = EventCollector()
    try:
        yield collector
    finally:
        collector.close()
        print(f"events received on {collector.socket}:\n{collector.describe()}")
