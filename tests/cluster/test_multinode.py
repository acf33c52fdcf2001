"""switchboard on a Ray cluster of two nodes, on this machine: `ray start --head` on
127.0.0.2 and `ray start --address` on 127.0.0.3 (each with its own temporary directory and
ports, stopped at the end), and `switchboard serve --runtime ray --workers 4 --listen
udp:0.0.0.0:P --listen tcp:0.0.0.0:P` joining them as a user would (docs/ray.md "A real
multi-node cluster"). Everything is seen from outside: the `ready` line, the controller's
`workers_info` (asked by a separate Ray driver), the MI over HTTP, SIPp parties and an event
subscriber socket.

- two workers on each node, each bound to its node's address (`0.0.0.0` is "this node's
  address"), the controller on one of the nodes;
- calls through either node's address are owned by that node's workers and raise, per call,
  the E_DLG_STATE_CHANGED sequence one process raises for the same scenario;
- a blind transfer whose new call goes to the other node, and an attended transfer whose two
  calls live on different nodes (the replacing INVITE sent to either node): the
  E_CALL_TRANSFER sequences of tests/cluster/test_ray_callops.py, the one-process ones;
- an in-dialog request marked for a worker of the other node is handled by the node it
  reached (relayed along its Route, from that node's address), never handed on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import EventCollector, collecting
from tests.support.ports import HOST, free_port, free_port_block
from tests.support.server import REPO_ROOT, StartServer, SwitchboardServer
from tests.support.sipp import (
    Sipp,
    StartSipp,
    assert_clean,
    killed_on_failure,
    received,
    wait_caller_first,
)

pytestmark = [pytest.mark.cluster, pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
CALLOPS = HERE.parent / "interop" / "scenarios" / "callops"
HEAD_IP, OTHER_IP = "127.0.0.2", "127.0.0.3"
NODE_IPS = (HEAD_IP, OTHER_IP)
WORKERS = 4  # two CPUs a node, one a worker: two on each
CALLS = 8
TRANSFER_KEYS = ("leg", "transfer_callid", "destination", "state", "status")


@dataclass
class Nodes:
    """The two Ray nodes: the head's GCS address and the environment every process that
    joins them needs (the cluster's token, this checkout on PYTHONPATH)."""

    address: str
    env: dict[str, str]
    logs: Path


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    # conftest.py keeps the suite's own Ray in its single-machine mode, which refuses a
    # second node: these nodes name their addresses explicitly instead.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH"))
                                        if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ray_start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`ray start --block ...` in its own session: it stops the node's processes when it
    gets SIGTERM; a process group to kill should it not."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
             "--disable-usage-stats", "--object-store-memory", str(100 * 1024 * 1024),
             "--num-cpus", "2", "--dashboard-agent-listen-port", str(free_port("tcp")),
             *args],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def _wait_started(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"ray start exited:\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"ray start silent:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _ray_stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the node drains its actors, up to 30 s), then the whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(45)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    """A head node on 127.0.0.2 and a second node on 127.0.0.3, two CPUs each. No
    autoscaler (`--no-monitor`: its metrics server would listen on every address) and no
    dashboard; every Ray socket is on the node's own address."""
    env = _ray_env()
    # Short: Ray puts Unix sockets under it.
    root = Path(tempfile.mkdtemp(prefix="sbn-", dir="/tmp"))
    gcs_port = free_port("tcp")
    started: list[subprocess.Popen[bytes]] = []
    try:
        head = _ray_start(env, root / "head.log", "--head", "--no-monitor",
                          "--include-dashboard", "false", "--node-ip-address", HEAD_IP,
                          "--port", str(gcs_port), "--temp-dir", str(root / "h"))
        started.append(head)
        _wait_started(head, root / "head.log")
        address = f"{HEAD_IP}:{gcs_port}"
        other = _ray_start(env, root / "other.log", "--address", address,
                           "--node-ip-address", OTHER_IP, "--temp-dir", str(root / "o"))
        started.append(other)
        _wait_started(other, root / "other.log")
        yield Nodes(address, env, root)
    finally:
        for proc in reversed(started):
            _ray_stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(nodes: Nodes) -> Iterator[SwitchboardServer]:
    """`switchboard serve --runtime ray` joining the two nodes from the head's machine, 4
    workers behind port P of "this node's address" on each node, the MI on 127.0.0.1."""
    port = free_port_block(1)
    mi_port = free_port("tcp")
    args = [sys.executable, "-m", "switchboard", "serve", "--runtime", "ray",
            "--ray-address", nodes.address, "--workers", str(WORKERS),
            "--listen", f"udp:0.0.0.0:{port}", "--listen", f"tcp:0.0.0.0:{port}",
            "--mi-http", f"{HOST}:{mi_port}"]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=nodes.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    server = SwitchboardServer(proc=proc, args=args, udp_port=port, tcp_port=port,
                               mi_port=mi_port, log_path=nodes.logs / "serve.log",
                               name="switchboard-multinode")
    server._start_readers()
    try:
        server.wait_for_output(r"\bready\b", 150.0, stderr_only=True)
        yield server
    finally:
        code = server.stop(timeout=30.0)
        print(server.describe())
        assert code == 0, server.describe()


def _ask_cluster(nodes: Nodes) -> dict[str, Any]:
    """What a separate driver of the cluster sees: `workers_info()` of the controller, the
    node the controller runs on, and the nodes' addresses by id."""
    script = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
controller = ray.get_actor("controller", namespace="switchboard")
where = ray.get(controller.__ray_call__.remote(
    lambda _: ray.get_runtime_context().get_node_id()))
nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
print(json.dumps({"workers": ray.get(controller.workers_info.remote()),
                  "controller_ip": nodes[where], "nodes": nodes}))
"""
    done = subprocess.run([sys.executable, "-c", script, nodes.address], env=nodes.env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@pytest.fixture(scope="module")
def placement(nodes: Nodes, cluster: SwitchboardServer) -> dict[str, Any]:
    return _ask_cluster(nodes)


def _node_of(placement: dict[str, Any]) -> dict[str, str]:
    """Worker number (as a dialog id's prefix writes it) → its node's address."""
    return {f"{w['index']:x}": str(w["node_ip"]) for w in placement["workers"]}


def _prefix(tag: str) -> str:
    return f"sb-nodes-{tag}-{secrets.token_hex(3)}-"


def _mi(server: SwitchboardServer, method: str, **params: Any) -> Any:
    return server.mi_result(method, params or None)


def _subscribe(server: SwitchboardServer, events: EventCollector, *names: str,
               expire: int = 120) -> None:
    for name in names:
        assert _mi(server, "evi:subscribe", event=name, socket=events.socket,
                   expire=expire) == "OK"


def _confirmed(server: SwitchboardServer, callid: str, timeout: float = 20.0
               ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for dialog in _mi(server, "dialog:list")["Dialogs"]:
            if dialog["callid"] == callid and dialog["state"] == 4:
                return dict(dialog)
        assert time.monotonic() < deadline, f"{callid} not confirmed after {timeout} s"
        time.sleep(0.1)


def _owner(events: EventCollector, callid: str) -> str:
    (first, *_) = events.params("E_DLG_STATE_CHANGED", lambda p: p["callid"] == callid)
    return str(first["id"]).partition(".")[0]


def _transfers(events: EventCollector, callid: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_CALL_TRANSFER", callid, *TRANSFER_KEYS)


def _between_nodes(scenario: Path, directory: Path) -> Path:
    """`scenario` (one of the cross-worker transferee scenarios, which move between two
    ports of 127.0.0.1 with setdest) moving between two hosts too: `-key old_host` and
    `-key new_host`."""
    text = scenario.read_text(encoding="iso-8859-1")
    moved = text
    for which in ("old", "new"):
        moved = moved.replace(f'host="127.0.0.1" port="[{which}_port]"',
                              f'host="[{which}_host]" port="[{which}_port]"')
    assert moved.count('host="[new_host]"') == 2 and moved.count('host="[old_host]"') == 1
    path = directory / scenario.name.replace("_cross", "_nodes")
    path.write_text(moved, encoding="iso-8859-1")
    return path


# -- where everything runs -----------------------------------------------------------------


def test_two_workers_on_each_node_behind_its_address(
    cluster: SwitchboardServer, placement: dict[str, Any]
) -> None:
    """`0.0.0.0` became each node's own address: the ready line lists both, and each
    worker's listeners are its node's address (the one its node joined with)."""
    ready = cluster.wait_for_output(r"\bready\b", stderr_only=True)
    port = cluster.udp_port
    for ip in NODE_IPS:
        assert f"udp:{ip}:{port}" in ready and f"tcp:{ip}:{port}" in ready, ready
    workers = placement["workers"]
    assert sorted(w["index"] for w in workers) == list(range(WORKERS))
    for worker in workers:
        assert placement["nodes"][worker["node_id"]] == worker["node_ip"], placement
        assert sorted(worker["listeners"]) == [["tcp", worker["node_ip"], port],
                                               ["udp", worker["node_ip"], port]], worker
    per_node = sorted(str(w["node_ip"]) for w in workers)
    assert per_node == [HEAD_IP, HEAD_IP, OTHER_IP, OTHER_IP], placement
    assert placement["controller_ip"] in NODE_IPS, placement


# -- calls --------------------------------------------------------------------------------


def _states(events: EventCollector, callid: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_DLG_STATE_CHANGED", callid, "old_state", "new_state")


def _calls_to(sipp: StartSipp, name: str, host: str, port: int, prefix: str,
              calls: int) -> tuple[Sipp, Sipp]:
    b = sipp(f"{name}-b", "uas.xml", local_port=free_port("udp"), calls=calls
             ).wait_listening()
    a = sipp(f"{name}-a", "uac.xml", remote=f"{host}:{port}", local_port=free_port("udp"),
             calls=calls, rate=20, keys={"uas_port": b.local_port},
             extra_args=("-cid_str", prefix + "%u@%s"))
    return a, b


def test_calls_through_both_nodes_raise_what_one_process_raises(
    sipp: StartSipp, switchboard_server: StartServer, cluster: SwitchboardServer,
    placement: dict[str, Any],
) -> None:
    """The same SIPp call, once through a local `serve` (one process) and 8 times through
    each node's address: every call of a node is owned by a worker of that node, both of
    its workers take a share, and each call's state changes are exactly the local ones."""
    with collecting() as events:
        local = switchboard_server("--event-datagram", events.socket)
        prefix = _prefix("local")
        a, b = _calls_to(sipp, "local", HOST, local.udp_port, prefix, 1)
        assert_clean(*wait_caller_first(a, b))
        callid = f"{prefix}1@{HOST}"
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == callid
                        and p["new_state"] == 5)
        one_process = _states(events, callid)
    assert one_process[-2:] == [(3, 4), (4, 5)], one_process

    node_of = _node_of(placement)
    prefixes = {ip: _prefix(ip.rpartition(".")[2]) for ip in NODE_IPS}
    with collecting() as events:
        _subscribe(cluster, events, "E_DLG_STATE_CHANGED")
        runs = [_calls_to(sipp, f"n{ip[-1]}", ip, cluster.udp_port, prefixes[ip], CALLS)
                for ip in NODE_IPS]
        for a, b in runs:
            assert_clean(*wait_caller_first(a, b), calls=CALLS)
        for ip, prefix in prefixes.items():
            ended = events.wait_for("E_DLG_STATE_CHANGED", lambda p, x=prefix:
                                    p["callid"].startswith(x) and p["new_state"] == 5,
                                    count=CALLS, timeout=30)
            assert ended
            owners = set()
            for n in range(1, CALLS + 1):
                callid = f"{prefix}{n}@{HOST}"
                assert _states(events, callid) == one_process, events.describe()
                owners.add(_owner(events, callid))
            assert {node_of[o] for o in owners} == {ip}, (ip, owners, node_of)
            assert len(owners) == 2, (ip, owners)  # both workers of the node took calls
        _subscribe(cluster, events, "E_DLG_STATE_CHANGED", expire=0)
    assert _mi(cluster, "dialog:list") == {"Dialogs": []}


# -- transfers across nodes -----------------------------------------------------------------


@pytest.mark.parametrize("old_ip", NODE_IPS, ids=["old-call-on-head", "old-call-on-other"])
def test_blind_transfer_whose_new_call_reaches_the_other_node(
    sipp: StartSipp, cluster: SwitchboardServer, placement: dict[str, Any], tmp_path: Path,
    old_ip: str,
) -> None:
    """A calls B through one node; the MI transfers A to C blind. A sends the new INVITE
    (`;osid=<old dialog id>`) to the other node, whose workers do not have that dialog: the
    one that takes it relays it and links it through the controller, and the old call's
    owner raises the one-process sequence, then ends the old call."""
    new_ip = OTHER_IP if old_ip == HEAD_IP else HEAD_IP
    port = cluster.udp_port
    node_of = _node_of(placement)
    b = sipp("b", CALLOPS / "uas_callee.xml", local_port=free_port("udp")).wait_listening()
    c = sipp("c", "uas.xml", local_port=free_port("udp")).wait_listening()
    prefix = _prefix("blind")
    old = f"{prefix}1@{HOST}"
    new = f"xfer///{old}"
    dest = f"sip:c@{HOST}:{c.local_port}"
    with collecting() as events:
        _subscribe(cluster, events, "E_CALL_TRANSFER", "E_DLG_STATE_CHANGED")
        a = sipp("a", _between_nodes(SCENARIOS / "uac_blind_cross.xml", tmp_path),
                 remote=f"{old_ip}:{port}", local_port=free_port("udp"),
                 keys={"uas_port": b.local_port, "old_host": old_ip, "old_port": port,
                       "new_host": new_ip, "new_port": port},
                 extra_args=("-cid_str", prefix + "%u@%s"))
        with killed_on_failure(a, b, c):
            dialog = _confirmed(cluster, old)
            assert _mi(cluster, "callops:transfer", callid=old, leg="caller",
                       destination=dest) == "Accepted"
        a_result, c_result, b_result = wait_caller_first(a, c, b)
        assert_clean(a_result, b_result, c_result)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == new
                        and p["new_state"] == 5, timeout=30)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["callid"] == old
                        and p["new_state"] == 5, timeout=30)
        assert _transfers(events, old) == [
            ("caller", "", dest, "start", ""),
            ("caller", "", "", "notify", "100 Trying"),
            ("caller", new, dest, "start", ""),
            ("caller", new, dest, "ok", "200 OK"),
            ("caller", new, "", "notify", "200 OK"),
        ], events.describe("E_CALL_TRANSFER")
        assert _transfers(events, new) == []
        owners = (_owner(events, old), _owner(events, new))
        assert (node_of[owners[0]], node_of[owners[1]]) == (old_ip, new_ip), (owners, node_of)
        _subscribe(cluster, events, "E_CALL_TRANSFER", "E_DLG_STATE_CHANGED", expire=0)
    [refer] = received(a_result, "REFER")
    assert refer.header("Refer-To") == f"<{dest};osid={dialog['ID']}>", refer.text
    [c_invite] = received(c_result, "INVITE")
    assert c_invite.ruri == dest, c_invite.text
    assert _mi(cluster, "dialog:list") == {"Dialogs": []}


@pytest.mark.parametrize("lands_on", NODE_IPS,
                         ids=["invite-to-first-call-node", "invite-to-second-call-node"])
def test_attended_transfer_whose_calls_live_on_different_nodes(
    sipp: StartSipp, cluster: SwitchboardServer, placement: dict[str, Any], tmp_path: Path,
    lands_on: str,
) -> None:
    """Call 1 A→B through the head node, call 2 D→C through the other node; callops:transfer
    hands A over to C (transfer_callid = call 2). The replacing INVITE goes to either node;
    it is linked to both calls wherever it lands, and each owner raises what one process
    raises for its call (tests/cluster/test_ray_callops.py)."""
    port = cluster.udp_port
    node_of = _node_of(placement)
    c = sipp("c", "uas_wait_bye.xml", local_port=free_port("udp"), calls=2).wait_listening()
    b = sipp("b", CALLOPS / "uas_callee.xml", local_port=free_port("udp")).wait_listening()
    p1, p2 = _prefix("att1"), _prefix("att2")
    call1, call2 = f"{p1}1@{HOST}", f"{p2}1@{HOST}"
    runs: list[Sipp] = [c, b]
    with collecting() as events:
        _subscribe(cluster, events, "E_CALL_TRANSFER", "E_DLG_STATE_CHANGED")
        try:
            d = sipp("d", "uac_wait_bye.xml", remote=f"{OTHER_IP}:{port}",
                     local_port=free_port("udp"), keys={"uas_port": c.local_port},
                     extra_args=("-cid_str", p2 + "%u@%s"))
            runs.append(d)
            second = _confirmed(cluster, call2)
            replaces = (f"{call2};to-tag={second['CALLEES'][0]['callee_tag']}"
                        f";from-tag={second['caller_tag']}")
            a = sipp("a", _between_nodes(SCENARIOS / "uac_attended_cross.xml", tmp_path),
                     remote=f"{HEAD_IP}:{port}", local_port=free_port("udp"),
                     keys={"uas_port": b.local_port, "old_host": HEAD_IP, "old_port": port,
                           "new_host": lands_on, "new_port": port, "replaces": replaces},
                     extra_args=("-cid_str", p1 + "%u@%s"))
            runs.append(a)
            _confirmed(cluster, call1)
            assert _mi(cluster, "callops:transfer", callid=call1, leg="caller",
                       transfer_callid=call2, transfer_leg="callee") == "Accepted"
        except BaseException:
            for run in runs:
                run.kill()
            raise
        a_result, b_result, d_result, c_result = wait_caller_first(a, b, d, c)
        assert_clean(a_result, b_result, d_result)
        assert_clean(c_result, calls=2)
        new = f"xfer///{call1}"
        for callid in (new, call1, call2):
            events.wait_for("E_DLG_STATE_CHANGED", lambda p, x=callid: p["callid"] == x
                            and p["new_state"] == 5, timeout=30)
        target = second["to_uri"]
        assert _transfers(events, call1) == [
            ("caller", "", target, "start", ""),
            ("caller", "", "", "notify", "100 Trying"),
            ("caller", new, target, "start", ""),
            ("caller", new, target, "ok", "200 OK"),
            ("caller", new, "", "notify", "200 OK"),
        ], events.describe("E_CALL_TRANSFER")
        assert _transfers(events, call2) == [
            ("callee", new, target, "start", ""),
            ("callee", new, target, "ok", "200 OK"),
        ], events.describe("E_CALL_TRANSFER")
        assert _transfers(events, new) == []
        owners = [_owner(events, callid) for callid in (call1, call2, new)]
        assert [node_of[o] for o in owners] == [HEAD_IP, OTHER_IP, lands_on], (owners, node_of)
        _subscribe(cluster, events, "E_CALL_TRANSFER", "E_DLG_STATE_CHANGED", expire=0)
    invites = [m for m in received(c_result, "INVITE") if m.header("Call-ID") == new]
    assert invites and invites[0].header("Replaces") == replaces, invites
    assert _mi(cluster, "dialog:list") == {"Dialogs": []}


# -- a mark of the other node ---------------------------------------------------------------


def test_a_request_marked_for_the_other_nodes_worker_is_handled_where_it_arrives(
    cluster: SwitchboardServer, placement: dict[str, Any]
) -> None:
    """A BYE whose Route names a worker of the other node (`wk=`), sent to the head node: no
    worker of the head node owns it, so the one that got it handles it as a message of a
    dialog it does not know: from a trusted source (loopback), relayed along its Route
    without being tracked, from the head node's shared address. Nothing is handed over."""
    port = cluster.udp_port
    elsewhere = next(w["index"] for w in placement["workers"] if w["node_ip"] == OTHER_IP)
    before = _mi(cluster, "statistics:get", statistics=["handoff:"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far:
        for sock in (ua, far):
            sock.bind((HOST, 0))
            sock.settimeout(10)
        ua_port, far_port = ua.getsockname()[1], far.getsockname()[1]
        callid = f"{_prefix('stray')}@{HOST}"
        bye = (f"BYE sip:b@{HOST}:{far_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {HOST}:{ua_port};branch=z9hG4bK-{secrets.token_hex(6)}\r\n"
               f"Route: <sip:{HEAD_IP}:{port};lr;wk={elsewhere:x}>\r\n"
               f"From: <sip:a@{HOST}>;tag=stray-a\r\n"
               f"To: <sip:b@{HOST}>;tag=stray-b\r\n"
               f"Call-ID: {callid}\r\n"
               "CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        ua.sendto(bye.encode(), (HEAD_IP, port))
        relayed, source = far.recvfrom(65535)
        after = _mi(cluster, "statistics:get", statistics=["handoff:"])
        text = relayed.decode()
        assert text.startswith(f"BYE sip:b@{HOST}:{far_port} SIP/2.0\r\n"), text
        assert source == (HEAD_IP, port), source
        vias = [ln for ln in text.split("\r\n") if ln.lower().startswith("via:")]
        assert vias[0].startswith(f"Via: SIP/2.0/UDP {HEAD_IP}:{port};"), text
        assert "wk=" not in "".join(ln for ln in text.split("\r\n")
                                    if ln.lower().startswith("route:")), text
        # Answered, so that the proxy's client transaction ends and the UA gets its 200.
        head = [ln for ln in text.split("\r\n") if ln.split(":")[0].lower()
                in ("via", "from", "to", "call-id", "cseq")]
        far.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(head)
                    + "\r\nContent-Length: 0\r\n\r\n").encode(), source)
        answer, answered_from = ua.recvfrom(65535)
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer
    assert answered_from == (HEAD_IP, port)
    assert after["handoff:sent"] == before["handoff:sent"], (before, after)
    assert after["handoff:refused"] == before["handoff:refused"], (before, after)
