"""The REST API and its event stream on the `ray` runtime: a SIPp call through a worker actor,
listed, held, resumed and ended over `/api/v1` on the driver's management server, each
operation followed to `ok`; the stream shows the call's events with the operations' ids; the
console's ladder (`/api/v1/calls/{call}/messages`) shows the call's messages, captured by the
worker that owns it. Calls on both workers are paged across them, in dialog-number order.
The driver's events come through a relay actor: killed, it is replaced.

One service for the module (2 workers, `serve` in this process as in test_ray_runtime.py);
the call is aimed at worker 1, so that nothing of it is in the driver's process.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ray_service import Service, import_ray
from tests.support.ports import HOST, free_port
from tests.support.sipp import Sipp, StartSipp, killed_on_failure, received, wait_clean

import_ray()

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop]

SCENARIOS = Path(__file__).parent / "scenarios"
INTEROP_SCENARIOS = Path(__file__).parents[1] / "interop" / "scenarios"
WORKER = 1


def rest(service: Service, method: str, path: str, body: Any = None
         ) -> tuple[int, dict[str, str], Any]:
    assert service.sb.mi is not None
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{HOST}:{service.sb.mi.port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def wait_done(service: Service, location: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, op = rest(service, "GET", location)
        assert status == 200, op
        if op["state"] != "pending":
            return dict(op)
        assert time.monotonic() < deadline, f"still pending after {timeout} s: {op}"
        time.sleep(0.1)


def wait_listed(service: Service, callid: str, timeout: float = 20.0) -> dict[str, Any]:
    """The call as `GET /api/v1/calls?state=confirmed` lists it, once it does (every page)."""
    deadline = time.monotonic() + timeout
    while True:
        cursor: str | None = None
        while True:
            query = "?state=confirmed&limit=50" + (f"&cursor={cursor}" if cursor else "")
            status, _, page = rest(service, "GET", f"/api/v1/calls{query}")
            assert status == 200, page
            for call in page["calls"]:
                if call["call_id"] == callid:
                    return dict(call)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert time.monotonic() < deadline, f"{callid} not listed after {timeout} s"
        time.sleep(0.1)


class Stream:
    """`GET /api/v1/events?call=...` read on a thread: every item, in order."""

    def __init__(self, service: Service, callid: str) -> None:
        assert service.sb.mi is not None
        query = urllib.parse.urlencode({"call": callid})
        self._response = urllib.request.urlopen(
            f"http://{HOST}:{service.sb.mi.port}/api/v1/events?{query}", timeout=60)
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event = ""
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    with self._cond:
                        self.items.append({"sse_event": event, **json.loads(line[6:])})
                        self._cond.notify_all()
        except (OSError, ValueError, AttributeError):
            pass  # `close` closed the response under the reading thread

    def wait_for(self, ok: Any, what: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok(self.items):
                left = deadline - time.monotonic()
                assert left > 0, f"event stream: not {what}; got {self.items}"
                self._cond.wait(left)
            return list(self.items)

    def close(self) -> None:
        self._response.close()


def start_call(sipp: StartSipp, service: Service) -> tuple[Sipp, Sipp, str]:
    b_port = free_port("udp")
    b = sipp("b", SCENARIOS / "uas_rest.xml", local_port=b_port, timeout=90).wait_listening()
    prefix = f"sb-ray-rest-{secrets.token_hex(4)}-"
    a = sipp("a", SCENARIOS / "uac_rest.xml", remote=f"{HOST}:{service.port(WORKER)}",
             local_port=free_port("udp"), timeout=90, keys={"uas_port": b_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    return a, b, f"{prefix}1@127.0.0.1"


def messages(service: Service, call: str) -> list[tuple[str, str]]:
    """(direction, first line) of each message `/api/v1/calls/{call}/messages` answers."""
    status, _, doc = rest(service, "GET",
                          f"/api/v1/calls/{urllib.parse.quote(call, safe='')}/messages")
    assert status == 200, doc
    assert doc["capturing"] is True
    return [(m["direction"], m["first_line"]) for m in doc["messages"]]


def test_a_call_listed_held_resumed_and_ended_over_rest(
        sipp: StartSipp, service: Service) -> None:
    # The console's capture, on in every worker (each holds up to 1,000 calls).
    status, _, capture = rest(service, "PUT", "/api/v1/capture", {"enabled": True})
    assert status == 200, capture
    assert (capture["enabled"], capture["max_calls"]) == (True, 2000), capture
    a, b, callid = start_call(sipp, service)
    with killed_on_failure(a, b):
        stream = Stream(service, callid)
        try:
            call = wait_listed(service, callid)
            # The ladder of the live call, by its dialog id: worker 1 captured it.
            live = messages(service, call["id"])
            assert live[0][0] == "in" and live[0][1].startswith("INVITE sip:"), live
            assert live[0][1].endswith(f"@127.0.0.1:{b.local_port};transport=UDP SIP/2.0")
            assert call["id"].startswith(f"{WORKER:x}."), call
            assert [leg["leg"] for leg in call["legs"]] == ["caller", "callee"]
            assert call["hold"] == "none"
            status, _, same = rest(service, "GET", f"/api/v1/calls/{call['id']}")
            assert (status, same["call_id"]) == (200, callid)

            done = {}
            for action in ("hold", "unhold"):
                status, headers, op = rest(service, "POST",
                                           f"/api/v1/calls/{callid}/{action}", {"leg": "callee"})
                assert status == 202, op
                assert headers["Location"] == f"/api/v1/operations/{op['id']}"
                done[action] = wait_done(service, headers["Location"])
                assert (done[action]["state"], done[action]["sip_status"]) == ("ok", 200), done
                status, _, now = rest(service, "GET", f"/api/v1/calls/{callid}")
                assert status == 200
                # The caller answers the proxy's re-INVITE with B's direction too, so the
                # call may show both legs held; the callee's is, whatever the caller said.
                assert now["legs"][1]["on_hold"] is (action == "hold"), now
                assert (now["hold"] == "none") is (action == "unhold"), now

            status, headers, op = rest(service, "DELETE", f"/api/v1/calls/{callid}")
            assert status == 202, op
            ended = wait_done(service, headers["Location"])
            assert ended["state"] == "ok", ended

            # The stream: the hold's and the unhold's events, each naming its operation,
            # and the call's end.
            items = stream.wait_for(
                lambda got: any(i["event"] == "E_DLG_STATE_CHANGED"
                                and i["params"]["new_state"] == 5 for i in got),
                "the call's end")
        finally:
            stream.close()
        _, b_result = wait_clean(a, b)
    holds = [(i["operation"], i["params"]["leg"], i["params"]["state"])
             for i in items if i["event"] == "E_CALL_HOLD"]
    hold_id, unhold_id = done["hold"]["id"], done["unhold"]["id"]
    # Every one names its operation: the hold's all came before the unhold's, and each
    # re-INVITEd the callee (start) and had it answered (ok). (The proxy re-INVITEs the
    # caller too, with the callee's answer: those events are there as well.)
    operations = [op for op, _, _ in holds]
    assert operations == sorted(operations, key=[hold_id, unhold_id].index), holds
    for op_id in (hold_id, unhold_id):
        callee = [state for op, leg, state in holds if op == op_id and leg == "callee"]
        assert callee == ["start", "ok"], holds
    assert all(i["sse_event"] == i["event"] for i in items)
    assert all(i["params"]["callid"] == callid for i in items)
    status, _, problem = rest(service, "GET", f"/api/v1/calls/{callid}")
    assert (status, problem["type"]) == (404, "urn:switchboard:problem:no-such-call")

    # The ladder of the ended call (by Call-ID: the worker still holds it): the INVITE
    # relayed, the hold's and the unhold's re-INVITEs to both parties, the BYEs of its end.
    ladder = messages(service, callid)
    sent = [line.split(" ", 1)[0] for direction, line in ladder if direction == "out"]
    assert sent.count("INVITE") == 1 + 2 + 2, ladder
    assert sent.count("BYE") == 2, ladder
    assert [line.split(" ", 1)[0] for direction, line in ladder if direction == "in"][:1] == [
        "INVITE"], ladder
    status, _, capture = rest(service, "PUT", "/api/v1/capture", {"enabled": False})
    assert (status, capture["enabled"], capture["calls"]) == (200, False, 0), capture
    assert len(received(b_result, "INVITE")) == 3
    assert len(received(b_result, "BYE")) == 1


def test_calls_on_both_workers_are_paged_across_them_and_ended(
        sipp: StartSipp, service: Service) -> None:
    """Three calls through each worker, listed two a page: every one once, in dialog-number
    order (worker 0's first), whichever worker a page's calls come from; each then ended over
    REST (its BYEs sent by the worker that owns it)."""
    calls = 3
    prefix = f"sb-ray-pages-{secrets.token_hex(4)}-"
    runs = []
    for worker in (0, 1):
        uas_port = free_port("udp")
        uas = sipp(f"uas-w{worker}", INTEROP_SCENARIOS / "uas_wait_bye.xml", local_port=uas_port,
                   calls=calls).wait_listening()
        uac = sipp(f"uac-w{worker}", INTEROP_SCENARIOS / "uac_wait_bye.xml",
                   remote=f"{HOST}:{service.port(worker)}", local_port=free_port("udp"),
                   calls=calls, keys={"uas_port": uas_port},
                   extra_args=("-cid_str", f"{prefix}w{worker}-%u@%s"))
        runs.append((uac, uas))
    with killed_on_failure(*(run for pair in runs for run in pair)):
        deadline = time.monotonic() + 20
        while True:
            listed: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                query = "?state=confirmed&limit=2" + (f"&cursor={cursor}" if cursor else "")
                status, _, page = rest(service, "GET", f"/api/v1/calls{query}")
                assert status == 200 and len(page["calls"]) <= 2, page
                listed.extend(c for c in page["calls"] if c["call_id"].startswith(prefix))
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            if len(listed) >= 2 * calls or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        ids = [c["id"] for c in listed]
        assert len(ids) == 2 * calls, listed
        numbers = [(int(w, 16) << 32) | int(s, 16) for w, s in (i.split(".") for i in ids)]
        assert numbers == sorted(set(numbers)), ids
        assert [i.split(".")[0] for i in ids] == ["0"] * calls + ["1"] * calls, ids
        for call in listed:
            assert call["call_id"].startswith(f"{prefix}w{call['id'].split('.')[0]}-"), call
            status, headers, op = rest(service, "DELETE", f"/api/v1/calls/{call['id']}")
            assert status == 202, op
            assert wait_done(service, headers["Location"])["state"] == "ok"
    for uac, uas in runs:
        wait_clean(uac, uas, calls=calls)


def test_operations_are_still_followed_after_the_event_relay_died(
        sipp: StartSipp, service: Service) -> None:
    """The driver's events come through a relay actor (`ray_runtime/watch.py`): killed, it is
    replaced and subscribed again, and the next operation reaches `ok` from its events."""
    ray = import_ray()
    a, b, callid = start_call(sipp, service)
    with killed_on_failure(a, b):
        wait_listed(service, callid)
        relays = []
        for action in ("hold", "unhold"):
            relays.append(service.sb._watch._relay)
            if action == "unhold":
                ray.kill(relays[-1])
                # Events raised before its successor is subscribed are lost (and counted):
                # the operation is asked for once it is.
                watch = service.sb._watch
                deadline = time.monotonic() + 30
                while watch._relay is relays[-1] or watch._lock.locked():
                    assert time.monotonic() < deadline, "the event relay was not replaced"
                    time.sleep(0.05)
            status, headers, op = rest(service, "POST", f"/api/v1/calls/{callid}/{action}",
                                       {"leg": "callee"})
            assert status == 202, op
            done = wait_done(service, headers["Location"], timeout=30)
            assert (done["state"], done["sip_status"]) == ("ok", 200), done
        assert relays[1] is not None
        assert service.sb._watch._relay not in (None, relays[1])
        status, headers, op = rest(service, "DELETE", f"/api/v1/calls/{callid}")
        assert status == 202, op
        wait_clean(a, b)
