"""Calls over TLS through `switchboard serve`, with clients we did not write: SIPp (Debian's
sip-tester is built without TLS) behind stunnel, which does the TLS on SIPp's behalf.

    caller: SIPp UAC --tcp--> stunnel client --TLS (verified)--> switchboard tls:
    callee: switchboard --TLS (verified, SNI)--> stunnel server --tcp--> SIPp UAS
            or switchboard --udp--> SIPp UAS

The caller's stunnel verifies switchboard's certificate against the test CA; switchboard
verifies the callee's stunnel against the same CA (`[tls] ca_file`), by the name `localhost`
that its static host table gives 127.0.0.1. Certificates are made at test time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.certs import TestPki, make_pki
from tests.support.ports import HOST, free_port
from tests.support.server import CONFIRMED, SwitchboardServer, wait_dialogs
from tests.support.sipp import Sipp, assert_clean, received
from tests.support.stunnel import Stunnel, stunnel_binary

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

StartSipp = Callable[..., Sipp]


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def stunnel(tmp_path: Path) -> Iterator[Stunnel]:
    if stunnel_binary() is None:
        pytest.fail("stunnel not installed (apt-get install stunnel4, or run scripts/test)",
                    pytrace=False)
    tunnel = Stunnel(tmp_path / "stunnel")
    yield tunnel
    tunnel.stop()
    print(tunnel.describe())


def tls_switchboard(start: Callable[..., SwitchboardServer], pki: TestPki, tmp_path: Path,
                    *extra: str) -> tuple[SwitchboardServer, int]:
    """`switchboard serve` on udp:P and tls:Q with a certificate from the test CA."""
    cert = pki.issue("switchboard")
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[tls]\ncertificate = "{cert.certificate}"\n'
                      f'private_key = "{cert.private_key}"\nca_file = "{pki.ca_file}"\n')
    tls_port = free_port("tcp")
    server = start("--config", str(config), "--listen", f"tls:{HOST}:{tls_port}", *extra,
                   tcp=False)
    return server, tls_port


@pytest.mark.parametrize("callee", ["tls", "udp"])
def test_tls_calls(sipp: StartSipp, switchboard_server: Callable[..., SwitchboardServer],
                   stunnel: Stunnel, pki: TestPki, tmp_path: Path, callee: str) -> None:
    """100 calls from a TLS caller to a TLS callee (TLS→TLS) or a UDP one (TLS→UDP): all
    clean on both sides; Record-Route is doubled across transports and the in-dialog
    requests cross back."""
    calls = 100
    server, tls_port = tls_switchboard(switchboard_server, pki, tmp_path)
    caller_tunnel = free_port("tcp")
    stunnel.client("caller", caller_tunnel, tls_port, pki.ca_file)
    uas_port = free_port("tcp" if callee == "tls" else "udp")
    if callee == "tls":
        callee_tunnel = free_port("tcp")
        peer = pki.issue("callee")
        stunnel.server("callee", callee_tunnel, uas_port, peer.certificate, peer.private_key)
        uas = sipp("uas", "tls/uas.xml", local_port=uas_port, transport="tcp", calls=calls,
                   keys={"contact_port": callee_tunnel})
        target_port, target_transport = callee_tunnel, "TLS"  # upper case, as in the wild
    else:
        uas = sipp("uas", "uas.xml", local_port=uas_port, transport="udp", calls=calls)
        target_port, target_transport = uas_port, "udp"
    uas.wait_listening()
    stunnel.start()
    uac = sipp("uac", "tls/uac.xml", remote=f"{HOST}:{caller_tunnel}",
               local_port=free_port("tcp"), transport="tcp", calls=calls, rate=20,
               keys={"uas_port": target_port, "callee_transport": target_transport})
    uac_result = uac.wait()
    uas_result = uas.wait(None if uac_result.returncode == 0 else 5.0)
    assert_clean(uac_result, uas_result, calls=calls)
    invite = received(uas_result, "INVITE")[0]
    via = invite.headers("via")[0]
    assert via.startswith(f"SIP/2.0/{'TLS' if callee == 'tls' else 'UDP'} "), via
    routes = invite.headers("record-route")
    if callee == "tls":
        assert len(routes) == 1 and ";transport=tls" in routes[0], routes
    else:
        # RFC 5658: one entry for each side, the callee's (udp) on top.
        assert len(routes) == 2, routes
        assert ";transport=" not in routes[0] and ";transport=tls" in routes[1], routes
    stats = server.mi_result("statistics:get", statistics=["dialog:"])
    assert stats["dialog:processed_dialogs"] == calls, stats
    assert stats["dialog:active_dialogs"] == 0, stats


def test_the_proxy_reaches_a_tls_caller_over_its_own_connection(
        sipp: StartSipp, switchboard_server: Callable[..., SwitchboardServer],
        stunnel: Stunnel, pki: TestPki, tmp_path: Path) -> None:
    """`dialog:end_dlg` sends BYE both ways: the TLS caller gets its BYE over the connection
    its call came in on (its Contact port is SIPp's TCP port, reachable only that way)."""
    server, tls_port = tls_switchboard(switchboard_server, pki, tmp_path)
    caller_tunnel = free_port("tcp")
    stunnel.client("caller", caller_tunnel, tls_port, pki.ca_file).start()
    uas_port = free_port("udp")
    uas = sipp("uas", "uas_wait_bye.xml", local_port=uas_port, calls=1).wait_listening()
    prefix = f"tls-end-{uas_port}-"
    uac = sipp("uac", "tls/uac_wait_bye.xml", remote=f"{HOST}:{caller_tunnel}",
               local_port=free_port("tcp"), transport="tcp", calls=1,
               keys={"uas_port": uas_port, "callee_transport": "udp"},
               extra_args=("-cid_str", prefix + "%u@%s"))
    try:
        callid = wait_confirmed_prefix(server, prefix)
        reply = server.mi("dialog:end_dlg", dialog_id=callid)
        assert "error" not in reply, reply
    except BaseException:
        uac.kill()
        uas.kill()
        raise
    uac_result = uac.wait()
    uas_result = uas.wait(None if uac_result.returncode == 0 else 5.0)
    assert_clean(uac_result, uas_result)
    bye = received(uac_result, "BYE")[0]
    assert bye.headers("via")[0].startswith("SIP/2.0/TLS "), bye.headers("via")


def wait_confirmed_prefix(server: SwitchboardServer, prefix: str) -> str:
    found = wait_dialogs(
        server, lambda ds: any(str(d.get("callid", "")).startswith(prefix)
                               and d.get("state") == CONFIRMED for d in ds),
        f"a call {prefix}* confirmed", 10.0)
    return next(str(d["callid"]) for d in found if str(d.get("callid", "")).startswith(prefix))
