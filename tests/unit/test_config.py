"""TOML configuration into frozen dataclasses, errors that name the key and line, CLI overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from switchboard.config import (
    Config,
    ConfigError,
    EventSubscription,
    HostPort,
    ListenSocket,
    apply_overrides,
    dump_config,
    load_config,
    parse_config,
    parse_host_port,
    parse_listen,
)
from switchboard.events import KNOWN_EVENTS

FULL = """\
[listen]
sockets = ["udp:127.0.0.1:5070", "tcp:[::1]:5071", "udp:0.0.0.0:0"]

[mi]
http = "[::1]:8899"
token = "s3cret"

[runtime]
kind = "ray"
ray_address = "127.0.0.1:6379"
workers = 4

[callops]
mode = "callid"
match_param = "xid"

[transfer]
end_old_call = false

[events]
datagram = ["udp:127.0.0.1:9000"]

[[events.subscribe]]
event = "E_CALL_TRANSFER"
socket = "tcp:127.0.0.1:9001"

[[events.subscribe]]
event = "E_CALL_HOLD"
socket = "udp:[::1]:9002"

[dialog]
lifetime = 3600

[proxy]
domains = ["example.com", "10.0.0.1"]
record_route = false

[script]
path = "routes.py"
"""


def test_defaults() -> None:
    config = parse_config("")
    assert config == Config() == load_config(None)
    assert config.listen.sockets == (ListenSocket("udp", "127.0.0.1", 5060),)
    assert config.mi.http == HostPort("127.0.0.1", 8888)
    assert config.mi.token == ""
    assert config.runtime.kind == "local"
    assert config.runtime.ray_address == ""
    assert config.runtime.workers == 0
    assert config.callops.mode == "param"
    assert config.callops.match_param == "osid"
    assert config.transfer.end_old_call is True
    assert config.events.datagram == ()
    assert config.events.subscribe == ()
    assert config.dialog.lifetime == 43200
    assert config.proxy.domains == ()
    assert config.proxy.record_route is True
    assert config.script.path == ""


def test_every_key() -> None:
    config = parse_config(FULL)
    assert config.listen.sockets == (
        ListenSocket("udp", "127.0.0.1", 5070),
        ListenSocket("tcp", "::1", 5071),
        ListenSocket("udp", "0.0.0.0", 0),
    )
    assert [str(s) for s in config.listen.sockets] == [
        "udp:127.0.0.1:5070",
        "tcp:[::1]:5071",
        "udp:0.0.0.0:0",
    ]
    assert config.mi.http == HostPort("::1", 8899)
    assert str(config.mi.http) == "[::1]:8899"
    assert config.mi.token == "s3cret"
    assert (config.runtime.kind, config.runtime.ray_address, config.runtime.workers) == (
        "ray",
        "127.0.0.1:6379",
        4,
    )
    assert (config.callops.mode, config.callops.match_param) == ("callid", "xid")
    assert config.transfer.end_old_call is False
    assert config.events.datagram == ("udp:127.0.0.1:9000",)
    assert config.events.subscribe == (
        EventSubscription("E_CALL_TRANSFER", "tcp:127.0.0.1:9001"),
        EventSubscription("E_CALL_HOLD", "udp:[::1]:9002"),
    )
    assert config.dialog.lifetime == 3600
    assert config.proxy.domains == ("example.com", "10.0.0.1")
    assert config.proxy.record_route is False
    assert config.script.path == "routes.py"


def test_config_is_frozen() -> None:
    config = parse_config("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mi = config.mi  # type: ignore[misc]


def test_empty_mi_http_disables_the_mi() -> None:
    assert parse_config('[mi]\nhttp = ""\n').mi.http is None


def test_static_subscriptions_expand_datagram_sockets_to_every_event() -> None:
    config = parse_config(FULL)
    pairs = config.events.static_subscriptions()
    assert pairs[: len(KNOWN_EVENTS)] == tuple(
        EventSubscription(e, "udp:127.0.0.1:9000") for e in KNOWN_EVENTS
    )
    assert pairs[len(KNOWN_EVENTS) :] == config.events.subscribe
    doubled = dataclasses.replace(
        config.events,
        subscribe=(EventSubscription("E_CALL_HOLD", "udp:127.0.0.1:9000"),),
    )
    assert len(doubled.static_subscriptions()) == len(KNOWN_EVENTS)


# --- errors ------------------------------------------------------------------------------------


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="sb.toml")
    return err.value


def test_unknown_key_names_key_and_line() -> None:
    err = _error('[listen]\nsockets = ["udp:127.0.0.1:5060"]\n\n[mi]\ntoken = ""\nhtpp = "x"\n')
    assert err.key == "mi.htpp"
    assert err.line == 6
    assert str(err).startswith("sb.toml:6: mi.htpp: unknown key")
    assert "http" in str(err)


def test_unknown_section() -> None:
    err = _error("[mi]\n\n[bogus]\nx = 1\n")
    assert (err.key, err.line) == ("bogus", 3)


def test_unknown_top_level_key() -> None:
    err = _error("workers = 3\n")
    assert (err.key, err.line) == ("workers", 1)


@pytest.mark.parametrize(
    ("text", "key", "line", "problem"),
    [
        ('[listen]\nsockets = "udp:127.0.0.1:5060"\n', "listen.sockets", 2, "array of strings"),
        ("[listen]\nsockets = []\n", "listen.sockets", 2, "at least one"),
        ('[listen]\nsockets = ["sctp:127.0.0.1:5060"]\n', "listen.sockets[0]", 2, "transport"),
        ('[listen]\nsockets = ["udp:127.0.0.1:5060", 5]\n', "listen.sockets[1]", 2, "a string"),
        ('[listen]\nsockets = ["udp:::1:5060"]\n', "listen.sockets[0]", 2, "brackets"),
        ('[listen]\nsockets = ["udp:host.example:5060"]\n', "listen.sockets[0]", 2, "IP"),
        ('[mi]\nhttp = "127.0.0.1:99999"\n', "mi.http", 2, "65535"),
        ("[mi]\nhttp = 8888\n", "mi.http", 2, "a string, not an integer"),
        ('[runtime]\nkind = "cloud"\n', "runtime.kind", 2, "local, ray"),
        ("[runtime]\nworkers = -1\n", "runtime.workers", 2, "at least 0"),
        ("[runtime]\nworkers = true\n", "runtime.workers", 2, "an integer, not a boolean"),
        ('[callops]\nmode = "PARAM"\n', "callops.mode", 2, "param, manual, callid"),
        ('[callops]\nmatch_param = "a b"\n', "callops.match_param", 2, "URI parameter"),
        ("[transfer]\nend_old_call = 1\n", "transfer.end_old_call", 2, "true or false"),
        ('[events]\ndatagram = ["tcp:127.0.0.1:9000"]\n', "events.datagram[0]", 2, "udp:IP:PORT"),
        ("[dialog]\nlifetime = 0\n", "dialog.lifetime", 2, "at least 1"),
        ("[dialog]\nlifetime = 1.5\n", "dialog.lifetime", 2, "a float"),
        ('[proxy]\ndomains = [""]\n', "proxy.domains[0]", 2, "not a domain"),
        ("[script]\npath = false\n", "script.path", 2, "a string"),
        ('listen = "x"\n', "listen", 1, "expected a table"),
    ],
)
def test_bad_values(text: str, key: str, line: int, problem: str) -> None:
    err = _error(text)
    assert err.key == key
    assert err.line == line
    assert problem in str(err)


def test_errors_in_the_second_subscription_point_at_its_lines() -> None:
    text = (
        "[events]\n"
        "[[events.subscribe]]\n"
        'event = "E_CALL_HOLD"\n'
        'socket = "udp:127.0.0.1:9000"\n'
        "[[events.subscribe]]\n"
        'event = "E_CALL_HOLD"\n'
        'socket = "udp:127.0.0.1"\n'
        "[[events.subscribe]]\n"
        'event = "E_NOPE"\n'
        'socket = "udp:127.0.0.1:9000"\n'
    )
    err = _error(text)
    assert (err.key, err.line) == ("events.subscribe[1].socket", 7)
    err = _error(text.replace('"udp:127.0.0.1"\n', '"udp:127.0.0.1:1"\n'))
    assert (err.key, err.line) == ("events.subscribe[2].event", 9)
    assert "unknown event 'E_NOPE'" in str(err)
    err = _error('[[events.subscribe]]\nevent = "E_CALL_HOLD"\n')
    assert (err.key, err.line) == ("events.subscribe[0].socket", 1)
    assert "missing" in str(err)
    err = _error('[[events.subscribe]]\nevent = "E_CALL_HOLD"\nsocket = "udp:127.0.0.1:1"\nx = 1\n')
    assert (err.key, err.line) == ("events.subscribe[0].x", 4)


def test_toml_syntax_error_keeps_tomllib_position() -> None:
    err = _error("[mi\nhttp = 1\n")
    assert "not valid TOML" in str(err)
    assert "line 1" in str(err)


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path) == parse_config(FULL)
    path.write_text("[mi]\nhttp = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value).startswith(f"{path}:2: mi.http:")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


# --- value parsers -----------------------------------------------------------------------------


def test_parse_listen_and_host_port() -> None:
    assert parse_listen("tcp:[2001:db8::1]:5060") == ListenSocket("tcp", "2001:db8::1", 5060)
    assert parse_host_port("127.0.0.1:0") == HostPort("127.0.0.1", 0)
    for transport in ("tls", "ws", "wss"):
        assert parse_listen(f"{transport}:127.0.0.1:0") == ListenSocket(transport, "127.0.0.1", 0)
    for bad in ("udp:127.0.0.1", "udp127.0.0.1:5060", "sctp:127.0.0.1:80", "WS:127.0.0.1:80",
                "udp:[::1:5060"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    with pytest.raises(ValueError):
        parse_host_port("127.0.0.1:0", allow_zero=False)


# --- CLI overrides -----------------------------------------------------------------------------


def test_overrides_replace_file_values() -> None:
    config = apply_overrides(
        parse_config(FULL),
        listen=["udp:127.0.0.1:6000", "tcp:127.0.0.1:6001"],
        mi_http="127.0.0.1:0",
        runtime="local",
        ray_address="",
        workers=2,
        mode="manual",
        match_param="sbid",
        event_datagram=["udp:127.0.0.1:7000"],
        script="other.py",
    )
    assert config.listen.sockets == (
        ListenSocket("udp", "127.0.0.1", 6000),
        ListenSocket("tcp", "127.0.0.1", 6001),
    )
    assert config.mi.http == HostPort("127.0.0.1", 0)
    assert config.mi.token == "s3cret"  # untouched: no flag for it
    assert (config.runtime.kind, config.runtime.ray_address, config.runtime.workers) == (
        "local",
        "",
        2,
    )
    assert (config.callops.mode, config.callops.match_param) == ("manual", "sbid")
    assert config.events.datagram == ("udp:127.0.0.1:7000",)
    assert config.events.subscribe == parse_config(FULL).events.subscribe
    assert config.script.path == "other.py"


def test_no_overrides_change_nothing() -> None:
    config = parse_config(FULL)
    assert apply_overrides(config) == config
    assert apply_overrides(config, listen=(), event_datagram=()) == config


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"listen": ["udp:1.2.3.4"]}, "--listen"),
        ({"mi_http": "localhost:80"}, "--mi-http"),
        ({"runtime": "k8s"}, "--runtime"),
        ({"workers": -2}, "--workers"),
        ({"mode": "auto"}, "--mode"),
        ({"match_param": "a;b"}, "--match-param"),
        ({"event_datagram": ["tcp:127.0.0.1:9"]}, "--event-datagram"),
    ],
)
def test_bad_overrides_name_the_flag(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), **kwargs)  # type: ignore[arg-type]
    assert err.value.key == flag
    assert str(err.value).startswith(f"{flag}: ")


def test_proxy_trusted_networks_are_validated() -> None:
    from switchboard.config import ConfigError, parse_config

    config = parse_config('[proxy]\ntrusted = ["10.0.0.0/8", "2001:db8::/32"]\n')
    assert config.proxy.trusted == ("10.0.0.0/8", "2001:db8::/32")
    with pytest.raises(ConfigError) as info:
        parse_config('[proxy]\ntrusted = ["10.0.0.0/8", "bogus"]\n')
    assert info.value.key == "proxy.trusted[1]" and info.value.line == 2


def test_security_keys() -> None:
    config = parse_config(
        '[auth]\nusers = {alice = "pw"}\nmethods = ["invite", "MESSAGE"]\n'
        'algorithms = ["MD5"]\nnonce_ttl = 60\nmax_failures = 3\nuser_max_failures = 0\n'
        'failure_window = 120\nban_time = 30\n[proxy]\nroute_secret = "k3y"\n')
    auth = config.auth
    assert auth.methods == ("INVITE", "MESSAGE")
    assert auth.algorithms == ("MD5",)
    assert (auth.nonce_ttl, auth.max_failures, auth.user_max_failures, auth.failure_window,
            auth.ban_time) == (60, 3, 0, 120, 30)
    assert config.proxy.route_secret == "k3y"
    defaults = parse_config("")
    assert defaults.auth.methods == ("*",)
    assert defaults.auth.algorithms == ("MD5", "SHA-256")
    assert (defaults.auth.max_failures, defaults.auth.ban_time) == (5, 900)


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[auth]\nmethods = ["IN VITE"]\n', "auth.methods[0]", "not a SIP method"),
    ('[auth]\nalgorithms = ["SHA-1"]\n', "auth.algorithms[0]", "is not one of"),
    ("[auth]\nalgorithms = []\n", "auth.algorithms", "at least one"),
    ("[auth]\nnonce_ttl = 0\n", "auth.nonce_ttl", "at least 1"),
    ("[auth]\nban_time = -1\n", "auth.ban_time", ""),
    ("[proxy]\nroute_secret = 5\n", "proxy.route_secret", ""),
])
def test_bad_security_values(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.key == key
    assert problem in str(info.value)


def test_the_route_secret_is_not_printed() -> None:
    text = dump_config(parse_config('[proxy]\nroute_secret = "k3y"\n'))
    assert "k3y" not in text and "route_secret" in text
    assert parse_config(dump_config(parse_config(""))) == Config()
