"""The configuration schema drives the rest: the reference in the docs is what it renders, each
key's default reads back through its own kind, `serve`'s options are its flags, its secrets are
hidden by `dump_config`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from switchboard.cli import serve
from switchboard.config import (
    Config,
    apply_overrides,
    dump_config,
    parse_config,
    reference,
    serve_flags,
)
from switchboard.config.kinds import Setting, Tables, settings

REPO = Path(__file__).resolve().parents[2]


def _keys(config: Config | None = None) -> list[tuple[str, Any, Setting[Any]]]:
    """(dotted key, value, setting) of every key of `config`, the defaults when None."""
    config = config or Config()
    return [
        (f"{section.name}.{f.name}", getattr(getattr(config, section.name), f.name), s)
        for section, _ in settings(config)
        for f, s in settings(getattr(config, section.name))
    ]


@pytest.mark.parametrize(("doc", "heading"), [
    ("README.md", "## Configuration reference"),
    ("docs/operations.md", "## Configuration"),
])
def test_the_reference_in_the_docs_is_the_schema(doc: str, heading: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    start = text.index("```toml\n", text.index(f"\n{heading}\n")) + len("```toml\n")
    shown = text[start:text.index("```\n", start)]
    assert shown == reference(), (
        f"{doc}: the ```toml block under {heading!r} is not what the schema renders; replace "
        "it with switchboard.config.reference()")


def test_the_reference_is_a_valid_configuration_of_the_defaults() -> None:
    assert parse_config(reference()) == Config()


def test_every_key_is_documented_and_its_default_reads_back() -> None:
    for key, default, s in _keys():
        assert s.doc, f"{key} has no comment for the reference"
        if isinstance(s.kind, Tables):
            for f, inner in settings(s.kind.table.cls):
                assert inner.doc and inner.example is not None, f"{key}.{f.name}"
                text = f"x = {inner.kind.toml(inner.example)}"
                assert inner.kind.read(tomllib.loads(text)["x"], ()) == inner.example
            continue
        text = f"x = {s.kind.toml(default)}"
        assert s.kind.read(tomllib.loads(text)["x"], ()) == default, key


def test_the_serve_flags_and_the_keys_they_override() -> None:
    assert {f.flag.name: f"{f.section}.{f.key}" for f in serve_flags()} == {
        "--listen": "listen.sockets",
        "--mi-http": "mi.http",
        "--runtime": "runtime.kind",
        "--ray-address": "runtime.ray_address",
        "--workers": "runtime.workers",
        "--mode": "callops.mode",
        "--match-param": "callops.match_param",
        "--event-datagram": "events.datagram",
        "--event-webhook": "events.webhooks",
        "--script": "script.path",
        "--log-format": "log.format",
        "--log-level": "log.level",
        "--hep": "hep.collector",
    }
    options = [p.opts[0] for p in serve.params]
    assert options == ["--config", *(f.flag.name for f in serve_flags())]


def test_a_flag_sets_only_its_key() -> None:
    given: dict[str, object] = {
        "listen": ["tcp:127.0.0.1:6000"], "mi_http": "", "runtime": "ray",
        "ray_address": "10.0.0.1:6379", "workers": 3, "mode": "callid", "match_param": "x",
        "event_datagram": ["udp:127.0.0.1:9"], "event_webhook": ["http://127.0.0.1:9/hook"],
        "script": "r.py", "log_format": "json",
        "log_level": "WARNING", "hep": "udp:127.0.0.1:9060",
    }
    flags = {f.flag.param: f for f in serve_flags()}
    assert set(given) == set(flags)
    defaults = {key: value for key, value, _ in _keys()}
    for param, value in given.items():
        flagged = _keys(apply_overrides(Config(), **{param: value}))
        assert [key for key, v, _ in flagged if v != defaults[key]] == [
            f"{flags[param].section}.{flags[param].key}"], param
    assert apply_overrides(Config(), log_level="WARNING").log.level == "warning"
    with pytest.raises(TypeError, match="tokn"):
        apply_overrides(Config(), tokn="x")


def test_secrets_are_hidden_unless_asked_for() -> None:
    assert [key for key, _, s in _keys() if s.secret] == [
        "mi.token", "events.webhook_secret", "proxy.route_secret", "auth.users"]
    config = parse_config('[mi]\ntoken = "t0ken"\n[proxy]\nroute_secret = "k3y"\n'
                          '[auth]\nusers = {alice = "pa55", bob = "w0rd"}\n'
                          '[events]\nwebhook_secret = "h00k"\n')
    hidden = dump_config(config)
    for secret in ("t0ken", "k3y", "pa55", "w0rd", "h00k"):
        assert secret not in hidden
    assert 'token = "<hidden>"  # set, not shown' in hidden
    assert 'users = {"alice" = "<hidden>", "bob" = "<hidden>"}' in hidden
    assert parse_config(dump_config(config, show_secrets=True)) == config
