"""Configuration: a TOML file (stdlib `tomllib`) read into frozen dataclasses, CLI flags on top.

Every key has a default, so no file at all is a valid configuration. Unknown keys and bad
values raise `ConfigError` naming the key, and the line in the file where it can be found.
This module validates shapes and values only; it opens no sockets and does not check that
files other than the configuration itself exist.

```toml
[listen]
sockets = ["udp:127.0.0.1:5060"]      # udp:IP:PORT, tcp:IP:PORT, IPv6 as udp:[::1]:5060
[mi]
http = "127.0.0.1:8888"               # "" disables the MI
token = ""                            # bearer token; "" = none
[runtime]
kind = "local"                        # local | ray
ray_address = ""
workers = 0                           # 0 = one per CPU
[callops]
mode = "param"                        # param | manual | callid
match_param = "osid"
[transfer]
end_old_call = true
[events]
datagram = []                         # udp:IP:PORT sockets that get every event
[[events.subscribe]]                  # static subscriptions, never expire
event = "E_CALL_TRANSFER"
socket = "tcp:127.0.0.1:9000"
[dialog]
lifetime = 43200                      # seconds
[proxy]
domains = []
record_route = true
trusted = ["127.0.0.0/8", "::1/128"]  # may relay anywhere; others get 403 (no open relay)
route_secret = ""                     # signs our Record-Route; "" = random at each start
[script]
path = ""
[log]
format = "text"                       # text | json (one JSON object per line)
level = "info"                        # debug | info | warning | error | critical
[hep]
collector = ""                        # udp:IP:PORT of a HEP v3 collector; "" = no capture
capture_id = 1                        # HEP capture agent id (0..4294967295)
[auth]
realm = ""                            # "" = the first proxy domain, else the listen address
users = {}                            # user = "password"; empty = no authentication
invites = true                        # false: never challenge INVITEs (407)
methods = ["*"]                       # new requests from untrusted sources challenged (407)
algorithms = ["MD5", "SHA-256"]       # digest algorithms offered, preferred first
nonce_ttl = 300                       # seconds a nonce may be used
max_failures = 5                      # failed digests from one source before it is banned
user_max_failures = 20                # ... for one user from any sources (0 = off)
failure_window = 600                  # seconds a failure is counted
ban_time = 900                        # seconds a banned source is ignored
[limits]
rate = 200                            # requests/s one untrusted source may send (0 = off)
burst = 400
tcp_connections_per_source = 64       # 0 = no limit
tcp_idle_timeout = 600                # seconds
```
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from switchboard.events import KNOWN_EVENTS
from switchboard.events.sinks import parse_sink
from switchboard.logs import LOG_FORMATS, LOG_LEVELS, LogFormat

Transport = Literal["udp", "tcp"]
RuntimeKind = Literal["local", "ray"]
CallopsMode = Literal["param", "manual", "callid"]

TRANSPORTS: Final[tuple[Transport, ...]] = ("udp", "tcp")
RUNTIME_KINDS: Final[tuple[RuntimeKind, ...]] = ("local", "ray")
CALLOPS_MODES: Final[tuple[CallopsMode, ...]] = ("param", "manual", "callid")

# An RFC 3261 `Method` token, and the digest algorithms (RFC 8760) the proxy can check.
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
DIGEST_ALGORITHMS: Final = ("SHA-256", "MD5")
# A URI parameter name must survive unescaped in a Refer-To URI (RFC 3261 §25.1 `pname`).
_URI_PARAM_NAME = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+\Z")

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or wrong. `key` is dotted (`mi.http`)."""

    def __init__(
        self, key: str, problem: str, *, source: str | None = None, line: int | None = None
    ) -> None:
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(f"{where}{key}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class HostPort:
    """An IP address and port; `host` carries no IPv6 brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenSocket:
    """A SIP listening socket, `udp:IP:PORT` or `tcp:IP:PORT`. Port 0 binds a free port."""

    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{HostPort(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    sockets: tuple[ListenSocket, ...] = (ListenSocket("udp", "127.0.0.1", 5060),)


@dataclass(frozen=True, slots=True)
class MIConfig:
    http: HostPort | None = HostPort("127.0.0.1", 8888)
    """Where the MI HTTP server listens; None when disabled."""
    token: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    kind: RuntimeKind = "local"
    ray_address: str = ""
    workers: int = 0
    """Worker count; 0 means one per CPU."""


@dataclass(frozen=True, slots=True)
class CallopsConfig:
    mode: CallopsMode = "param"
    match_param: str = "osid"


@dataclass(frozen=True, slots=True)
class TransferConfig:
    end_old_call: bool = True


@dataclass(frozen=True, slots=True)
class EventSubscription:
    event: str
    socket: str


@dataclass(frozen=True, slots=True)
class EventsConfig:
    datagram: tuple[str, ...] = ()
    """Sockets subscribed to every event."""
    subscribe: tuple[EventSubscription, ...] = ()

    def static_subscriptions(self) -> tuple[EventSubscription, ...]:
        """Every static (event, socket) pair: each datagram socket for every known event,
        then the explicit subscriptions; duplicates removed, order kept."""
        pairs = [EventSubscription(e, s) for s in self.datagram for e in KNOWN_EVENTS]
        pairs.extend(self.subscribe)
        return tuple(dict.fromkeys(pairs))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Digest authentication; off while `users` is empty."""

    realm: str = ""  # "" = the first proxy domain, else the first listen address
    users: tuple[tuple[str, str], ...] = ()  # (user, password) pairs
    invites: bool = True  # false: INVITEs are never challenged (407)
    # New requests from untrusted sources that must authenticate: "*" = every method but
    # ACK and CANCEL (REGISTER is always challenged, with 401).
    methods: tuple[str, ...] = ("*",)
    # Offered in this order. MD5 first by default: SIPp 3.6 and many older phones read only
    # the first challenge and know no SHA-256; put SHA-256 first where every client has it.
    algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    nonce_ttl: int = 300
    max_failures: int = 5  # failed digests from one source within the window: banned
    user_max_failures: int = 20  # failed digests for one user from any sources (0 = off)
    failure_window: int = 600
    ban_time: int = 900  # seconds a banned source's messages are dropped unanswered


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Protection against floods and abuse (issue 6); trusted networks are exempt from
    the rate limit."""

    rate: int = 200  # requests per second one untrusted source may send (0 = no limit)
    burst: int = 400  # requests it may send at once
    tcp_connections_per_source: int = 64  # inbound TCP connections per source (0 = any)
    tcp_idle_timeout: int = 600  # seconds of silence after which a TCP connection closes


@dataclass(frozen=True, slots=True)
class DialogConfig:
    lifetime: int = 43200
    """Default dialog timeout, seconds."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    domains: tuple[str, ...] = ()
    record_route: bool = True
    # Sources that may relay anywhere (no open relay for the rest).
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    route_secret: str = ""  # key signing our Record-Route; "" = random at each start


@dataclass(frozen=True, slots=True)
class ScriptConfig:
    path: str = ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: LogFormat = "text"
    level: str = "info"
    """A name from LOG_LEVELS, lower case."""


@dataclass(frozen=True, slots=True)
class HepConfig:
    collector: HostPort | None = None
    """Where HEP v3 copies of every SIP packet go (over UDP); None when capture is off."""
    capture_id: int = 1


MAX_CAPTURE_ID: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    mi: MIConfig = field(default_factory=MIConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    callops: CallopsConfig = field(default_factory=CallopsConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    script: ScriptConfig = field(default_factory=ScriptConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hep: HepConfig = field(default_factory=HepConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


# --- value parsers (raise ValueError with the problem; callers add the key) -------------------


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _parse_port(text: str, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"port must be a number in {low}..65535, not {text!r}")
    return int(text)


def parse_host_port(text: str, *, allow_zero: bool = True) -> HostPort:
    """`IP:PORT`, or `[IPv6]:PORT`."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, not {text!r}")
        port_text = rest[1:]
        if ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected IP:PORT, not {text!r}")
        if ":" in host:
            raise ValueError(f"put an IPv6 address in brackets: [{host}]:{port_text}")
    return HostPort(_parse_ip(host), _parse_port(port_text, allow_zero=allow_zero))


def parse_listen(text: str) -> ListenSocket:
    """A listen socket string: `udp:IP:PORT` or `tcp:IP:PORT` (IPv6 in brackets)."""
    transport, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"expected udp:IP:PORT or tcp:IP:PORT, not {text!r}")
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r} in {text!r} (expected udp or tcp)")
    address = parse_host_port(rest)
    return ListenSocket(transport, address.host, address.port)


def _parse_datagram_socket(text: str) -> str:
    address = parse_sink(text)
    if address.transport != "udp":
        raise ValueError(f"expected udp:IP:PORT, not {text!r}")
    return str(address)


def _parse_event_socket(text: str) -> str:
    return str(parse_sink(text))


def _parse_match_param(text: str) -> str:
    if not _URI_PARAM_NAME.match(text):
        raise ValueError(f"{text!r} is not a valid URI parameter name")
    return text


def _parse_mi_http(text: str) -> HostPort | None:
    return None if text == "" else parse_host_port(text)


def parse_hep(text: str) -> HostPort | None:
    """A HEP collector, `udp:IP:PORT`; "" for none."""
    if text == "":
        return None
    transport, sep, rest = text.partition(":")
    if not sep or transport != "udp":
        raise ValueError(f"expected udp:IP:PORT, not {text!r}")
    return parse_host_port(rest, allow_zero=False)


def _parse_log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return text.lower()


def _choice(choices: Sequence[_T]) -> Callable[[str], _T]:
    def parse(text: str) -> _T:
        for choice in choices:
            if choice == text:
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, not {text!r}")

    return parse


# --- reading a TOML document -------------------------------------------------------------------


class _Reader:
    """Walks the TOML document, turning wrong types and values into `ConfigError`s."""

    def __init__(self, text: str, source: str | None) -> None:
        self._text = text
        self._source = source

    def error(self, path: Sequence[str | int], problem: str) -> ConfigError:
        return ConfigError(
            _dotted(path), problem, source=self._source, line=_find_line(self._text, path)
        )

    def missing(self, path: tuple[str | int, ...], key: str) -> ConfigError:
        # Point at the table that lacks the key: the key itself has no line.
        return ConfigError(
            _dotted((*path, key)), "missing", source=self._source, line=_find_line(self._text, path)
        )

    def table(self, data: Any, path: tuple[str | int, ...], keys: Sequence[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(path, "expected a table")
        for key in data:
            if key not in keys:
                known = ", ".join(keys)
                raise self.error((*path, key), f"unknown key (known here: {known})")
        return data

    def str_(self, data: Mapping[str, Any], path: tuple[str | int, ...], key: str) -> str:
        value = data[key]
        if not isinstance(value, str):
            raise self.error((*path, key), f"expected a string, not {_kind(value)}")
        return value

    def bool_(self, data: Mapping[str, Any], path: tuple[str | int, ...], key: str) -> bool:
        value = data[key]
        if not isinstance(value, bool):
            raise self.error((*path, key), f"expected true or false, not {_kind(value)}")
        return value

    def int_(
        self, data: Mapping[str, Any], path: tuple[str | int, ...], key: str, *, minimum: int
    ) -> int:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error((*path, key), f"expected an integer, not {_kind(value)}")
        if value < minimum:
            raise self.error((*path, key), f"must be at least {minimum}, not {value}")
        return value

    def str_list(self, data: Mapping[str, Any], path: tuple[str | int, ...], key: str) -> list[str]:
        value = data[key]
        if not isinstance(value, list):
            raise self.error((*path, key), f"expected an array of strings, not {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error((*path, key, index), f"expected a string, not {_kind(item)}")
        return value

    def parsed(self, path: tuple[str | int, ...], text: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _find_line(text: str, path: Sequence[str | int]) -> int | None:
    """Best effort: the line of `path` in the TOML text, for `[table]`, `[[array]]` and
    `key = value` layouts (not inline tables or dotted keys). None when not found."""
    names = [p for p in path if isinstance(p, str)]
    # Only one array of tables exists (events.subscribe), so one index is enough.
    wanted = next((p for p in path if isinstance(p, int)), None)
    header: list[str] = []
    element: int | None = None
    seen: dict[tuple[str, ...], int] = {}
    table_line: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(raw)
        if m:
            array, table = m.group(1), m.group(2)
            header = [part.strip().strip("\"'") for part in (array or table).split(".")]
            element = None
            if array:
                element = seen[tuple(header)] = seen.get(tuple(header), -1) + 1
            if header == names and _same_element(element, wanted) and table_line is None:
                table_line = number
            continue
        if (
            len(names) > len(header)
            and names[: len(header)] == header
            and _same_element(element, wanted)
            and re.match(rf"\s*[\"']?{re.escape(names[len(header)])}[\"']?\s*=", raw)
        ):
            return number
    return table_line


_HEADER = re.compile(r"\s*(?:\[\[\s*([^\]]+?)\s*\]\]|\[\s*([^\]]+?)\s*\])")


def _same_element(element: int | None, wanted: int | None) -> bool:
    return element is None or wanted is None or element == wanted


_SECTIONS: Final = (
    "listen",
    "mi",
    "runtime",
    "callops",
    "transfer",
    "events",
    "dialog",
    "proxy",
    "script",
    "log",
    "hep",
    "limits",
    "auth",
)


def parse_config(text: str, *, source: str | None = None) -> Config:
    """Build a `Config` from TOML text; `source` names the file in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", source=source) from None
    r = _Reader(text, source)
    top = r.table(document, (), _SECTIONS)
    config = Config()

    if "listen" in top:
        data = r.table(top["listen"], ("listen",), ("sockets",))
        if "sockets" in data:
            texts = r.str_list(data, ("listen",), "sockets")
            if not texts:
                raise r.error(("listen", "sockets"), "at least one socket is needed")
            sockets = tuple(
                r.parsed(("listen", "sockets", i), t, parse_listen) for i, t in enumerate(texts)
            )
            config = dataclasses.replace(config, listen=ListenConfig(sockets))

    if "mi" in top:
        data = r.table(top["mi"], ("mi",), ("http", "token"))
        mi = config.mi
        if "http" in data:
            http = r.parsed(("mi", "http"), r.str_(data, ("mi",), "http"), _parse_mi_http)
            mi = dataclasses.replace(mi, http=http)
        if "token" in data:
            mi = dataclasses.replace(mi, token=r.str_(data, ("mi",), "token"))
        config = dataclasses.replace(config, mi=mi)

    if "runtime" in top:
        data = r.table(top["runtime"], ("runtime",), ("kind", "ray_address", "workers"))
        runtime = config.runtime
        if "kind" in data:
            kind = r.parsed(
                ("runtime", "kind"), r.str_(data, ("runtime",), "kind"), _choice(RUNTIME_KINDS)
            )
            runtime = dataclasses.replace(runtime, kind=kind)
        if "ray_address" in data:
            runtime = dataclasses.replace(
                runtime, ray_address=r.str_(data, ("runtime",), "ray_address")
            )
        if "workers" in data:
            runtime = dataclasses.replace(
                runtime, workers=r.int_(data, ("runtime",), "workers", minimum=0)
            )
        config = dataclasses.replace(config, runtime=runtime)

    if "callops" in top:
        data = r.table(top["callops"], ("callops",), ("mode", "match_param"))
        callops = config.callops
        if "mode" in data:
            mode = r.parsed(
                ("callops", "mode"), r.str_(data, ("callops",), "mode"), _choice(CALLOPS_MODES)
            )
            callops = dataclasses.replace(callops, mode=mode)
        if "match_param" in data:
            name = r.parsed(
                ("callops", "match_param"),
                r.str_(data, ("callops",), "match_param"),
                _parse_match_param,
            )
            callops = dataclasses.replace(callops, match_param=name)
        config = dataclasses.replace(config, callops=callops)

    if "transfer" in top:
        data = r.table(top["transfer"], ("transfer",), ("end_old_call",))
        if "end_old_call" in data:
            config = dataclasses.replace(
                config,
                transfer=TransferConfig(r.bool_(data, ("transfer",), "end_old_call")),
            )

    if "events" in top:
        config = dataclasses.replace(config, events=_read_events(r, top["events"]))

    if "auth" in top:
        numbers = ("nonce_ttl", "max_failures", "user_max_failures", "failure_window",
                   "ban_time")
        data = r.table(top["auth"], ("auth",),
                       ("realm", "users", "invites", "methods", "algorithms", *numbers))
        auth = config.auth
        if "realm" in data:
            auth = dataclasses.replace(auth, realm=r.str_(data, ("auth",), "realm"))
        if "invites" in data:
            auth = dataclasses.replace(auth, invites=r.bool_(data, ("auth",), "invites"))
        if "methods" in data:
            methods = r.str_list(data, ("auth",), "methods")
            for index, method in enumerate(methods):
                if method != "*" and not _METHOD.fullmatch(method):
                    raise r.error(("auth", "methods", index),
                                  f"not a SIP method or \"*\": {method!r}")
            auth = dataclasses.replace(auth, methods=tuple(m.upper() for m in methods))
        if "algorithms" in data:
            algorithms = r.str_list(data, ("auth",), "algorithms")
            for index, algorithm in enumerate(algorithms):
                if algorithm not in DIGEST_ALGORITHMS:
                    raise r.error(("auth", "algorithms", index),
                                  f"{algorithm!r} is not one of {', '.join(DIGEST_ALGORITHMS)}")
            if not algorithms:
                raise r.error(("auth", "algorithms"), "needs at least one algorithm")
            auth = dataclasses.replace(auth, algorithms=tuple(dict.fromkeys(algorithms)))
        values = {key: r.int_(data, ("auth",), key, minimum=0) for key in numbers if key in data}
        for key in ("nonce_ttl", "failure_window"):
            if values.get(key) == 0:
                raise r.error(("auth", key), "must be at least 1")
        auth = dataclasses.replace(
            auth,
            nonce_ttl=values.get("nonce_ttl", auth.nonce_ttl),
            max_failures=values.get("max_failures", auth.max_failures),
            user_max_failures=values.get("user_max_failures", auth.user_max_failures),
            failure_window=values.get("failure_window", auth.failure_window),
            ban_time=values.get("ban_time", auth.ban_time),
        )
        if "users" in data:
            users = data["users"]
            if not isinstance(users, dict):
                raise r.error(("auth", "users"),
                              f"expected a table of user = \"password\", not {_kind(users)}")
            for user, password in users.items():
                if not isinstance(password, str) or not user or '"' in user:
                    raise r.error(("auth", "users", user), "expected a password string")
            auth = dataclasses.replace(auth, users=tuple(sorted(users.items())))
        config = dataclasses.replace(config, auth=auth)

    if "limits" in top:
        keys = ("rate", "burst", "tcp_connections_per_source", "tcp_idle_timeout")
        data = r.table(top["limits"], ("limits",), keys)
        values = {key: r.int_(data, ("limits",), key, minimum=0) for key in keys if key in data}
        config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **values))

    if "dialog" in top:
        data = r.table(top["dialog"], ("dialog",), ("lifetime",))
        if "lifetime" in data:
            config = dataclasses.replace(
                config, dialog=DialogConfig(r.int_(data, ("dialog",), "lifetime", minimum=1))
            )

    if "proxy" in top:
        data = r.table(top["proxy"], ("proxy",),
                       ("domains", "record_route", "trusted", "route_secret"))
        proxy = config.proxy
        if "domains" in data:
            domains = r.str_list(data, ("proxy",), "domains")
            for index, domain in enumerate(domains):
                if not domain or any(c.isspace() for c in domain):
                    raise r.error(("proxy", "domains", index), f"not a domain: {domain!r}")
            proxy = dataclasses.replace(proxy, domains=tuple(domains))
        if "record_route" in data:
            proxy = dataclasses.replace(
                proxy, record_route=r.bool_(data, ("proxy",), "record_route")
            )
        if "trusted" in data:
            networks = r.str_list(data, ("proxy",), "trusted")
            for index, network in enumerate(networks):
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise r.error(("proxy", "trusted", index),
                                  f"not an IP network: {network!r}") from None
            proxy = dataclasses.replace(proxy, trusted=tuple(networks))
        if "route_secret" in data:
            proxy = dataclasses.replace(
                proxy, route_secret=r.str_(data, ("proxy",), "route_secret"))
        config = dataclasses.replace(config, proxy=proxy)

    if "script" in top:
        data = r.table(top["script"], ("script",), ("path",))
        if "path" in data:
            config = dataclasses.replace(
                config, script=ScriptConfig(r.str_(data, ("script",), "path"))
            )

    if "log" in top:
        data = r.table(top["log"], ("log",), ("format", "level"))
        log_config = config.log
        if "format" in data:
            fmt = r.parsed(
                ("log", "format"), r.str_(data, ("log",), "format"), _choice(LOG_FORMATS)
            )
            log_config = dataclasses.replace(log_config, format=fmt)
        if "level" in data:
            level = r.parsed(
                ("log", "level"), r.str_(data, ("log",), "level"), _parse_log_level
            )
            log_config = dataclasses.replace(log_config, level=level)
        config = dataclasses.replace(config, log=log_config)

    if "hep" in top:
        data = r.table(top["hep"], ("hep",), ("collector", "capture_id"))
        hep = config.hep
        if "collector" in data:
            collector = r.parsed(
                ("hep", "collector"), r.str_(data, ("hep",), "collector"), parse_hep
            )
            hep = dataclasses.replace(hep, collector=collector)
        if "capture_id" in data:
            capture_id = r.int_(data, ("hep",), "capture_id", minimum=0)
            if capture_id > MAX_CAPTURE_ID:
                raise r.error(
                    ("hep", "capture_id"), f"must be at most {MAX_CAPTURE_ID}, not {capture_id}"
                )
            hep = dataclasses.replace(hep, capture_id=capture_id)
        config = dataclasses.replace(config, hep=hep)

    return config


def _read_events(r: _Reader, raw: Any) -> EventsConfig:
    data = r.table(raw, ("events",), ("datagram", "subscribe"))
    datagram: tuple[str, ...] = ()
    if "datagram" in data:
        texts = r.str_list(data, ("events",), "datagram")
        datagram = tuple(
            r.parsed(("events", "datagram", i), t, _parse_datagram_socket)
            for i, t in enumerate(texts)
        )
    subscribe: list[EventSubscription] = []
    if "subscribe" in data:
        entries = data["subscribe"]
        if not isinstance(entries, list):
            raise r.error(
                ("events", "subscribe"), "expected an array of tables ([[events.subscribe]])"
            )
        for index, entry in enumerate(entries):
            path: tuple[str | int, ...] = ("events", "subscribe", index)
            item = r.table(entry, path, ("event", "socket"))
            for needed in ("event", "socket"):
                if needed not in item:
                    raise r.missing(path, needed)
            event = r.str_(item, path, "event")
            if event not in KNOWN_EVENTS:
                raise r.error(
                    (*path, "event"),
                    f"unknown event {event!r} (known: {', '.join(KNOWN_EVENTS)})",
                )
            socket = r.parsed((*path, "socket"), r.str_(item, path, "socket"), _parse_event_socket)
            subscribe.append(EventSubscription(event, socket))
    return EventsConfig(datagram, tuple(subscribe))


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML file at `path`; the defaults when `path` is None."""
    if path is None:
        return Config()
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"cannot read: {exc}", source=source) from None
    return parse_config(text, source=source)


def apply_overrides(
    config: Config,
    *,
    listen: Sequence[str] | None = None,
    mi_http: str | None = None,
    runtime: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    mode: str | None = None,
    match_param: str | None = None,
    event_datagram: Sequence[str] | None = None,
    script: str | None = None,
    hep: str | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> Config:
    """Apply `serve` flags on top of `config`. A flag that is given replaces the file's value
    (`--listen` and `--event-datagram` replace the whole list); None leaves it alone.
    Errors name the flag (`--listen`)."""

    def parsed(flag: str, text: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise ConfigError(flag, str(exc)) from None

    if listen:
        sockets = tuple(parsed("--listen", t, parse_listen) for t in listen)
        config = dataclasses.replace(config, listen=ListenConfig(sockets))
    if mi_http is not None:
        http = parsed("--mi-http", mi_http, _parse_mi_http)
        config = dataclasses.replace(config, mi=dataclasses.replace(config.mi, http=http))
    runtime_config = config.runtime
    if runtime is not None:
        kind = parsed("--runtime", runtime, _choice(RUNTIME_KINDS))
        runtime_config = dataclasses.replace(runtime_config, kind=kind)
    if ray_address is not None:
        runtime_config = dataclasses.replace(runtime_config, ray_address=ray_address)
    if workers is not None:
        if workers < 0:
            raise ConfigError("--workers", f"must be at least 0, not {workers}")
        runtime_config = dataclasses.replace(runtime_config, workers=workers)
    config = dataclasses.replace(config, runtime=runtime_config)
    callops = config.callops
    if mode is not None:
        callops = dataclasses.replace(callops, mode=parsed("--mode", mode, _choice(CALLOPS_MODES)))
    if match_param is not None:
        name = parsed("--match-param", match_param, _parse_match_param)
        callops = dataclasses.replace(callops, match_param=name)
    config = dataclasses.replace(config, callops=callops)
    if event_datagram:
        datagram = tuple(
            parsed("--event-datagram", t, _parse_datagram_socket) for t in event_datagram
        )
        config = dataclasses.replace(
            config, events=dataclasses.replace(config.events, datagram=datagram)
        )
    if script is not None:
        config = dataclasses.replace(config, script=ScriptConfig(script))
    if hep is not None:
        collector = parsed("--hep", hep, parse_hep)
        config = dataclasses.replace(
            config, hep=dataclasses.replace(config.hep, collector=collector)
        )
    log_config = config.log
    if log_format is not None:
        fmt = parsed("--log-format", log_format, _choice(LOG_FORMATS))
        log_config = dataclasses.replace(log_config, format=fmt)
    if log_level is not None:
        level = parsed("--log-level", log_level, _parse_log_level)
        log_config = dataclasses.replace(log_config, level=level)
    return dataclasses.replace(config, log=log_config)


def dump_config(config: Config, *, show_secrets: bool = False) -> str:
    """`config` as TOML that `parse_config` reads back to an equal `Config`, every key
    written (defaults included). A set `mi.token` is written as a placeholder unless
    `show_secrets`."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        lines.append(f"[{section.name}]")
        tables: list[str] = []
        for item in dataclasses.fields(value):
            data = getattr(value, item.name)
            if item.name == "subscribe":
                for sub in data:
                    tables += ["", f"[[{section.name}.subscribe]]"]
                    tables += [f"event = {_toml(sub.event)}", f"socket = {_toml(sub.socket)}"]
                continue
            if section.name == "hep" and item.name == "collector" and data is not None:
                data = f"udp:{data}"
            if (item.name in ("token", "route_secret") and data and not show_secrets):
                lines.append(f'{item.name} = "<hidden>"  # set, not shown')
                continue
            if section.name == "auth" and item.name == "users":
                shown = ", ".join(
                    f"{_toml(user)} = {_toml(password if show_secrets else '<hidden>')}"
                    for user, password in data)
                lines.append(f"users = {{{shown}}}")
                continue
            lines.append(f"{item.name} = {_toml(data)}")
        lines += tables
        lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if value is None:
        return '""'
    # HostPort, ListenSocket and plain strings: their text form is what the file holds.
    return json.dumps(str(value), ensure_ascii=False)
