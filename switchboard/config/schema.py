"""The configuration schema: one frozen dataclass per section of the TOML file, and in it each
key declared once — its name, type and default as a field, and in the field's
`metadata=setting(...)` its kind of value (which checks it), the comment the reference shows,
the `serve` flag that overrides it and whether it is a secret.

Reading the file, the flag overrides, `check-config --print` and the reference in README.md
and docs/operations.md are all derived from these declarations: a key added here is read,
overridable (with a `flag`), printed and documented. The proxy core's own settings are made
from a `Config` in one place, `cluster/local.py:proxy_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from switchboard.events import KNOWN_EVENTS
from switchboard.logs import LOG_FORMATS, LOG_LEVELS, LogFormat
from switchboard.sip.message import MAX_MESSAGE_SIZE

from .kinds import (
    Bool,
    Choice,
    FilePath,
    Flag,
    Int,
    Tables,
    Text,
    TextList,
    Users,
    setting,
)
from .values import (
    ALLOCATORS,
    CALLOPS_MODES,
    MAX_CAPTURE_ID,
    RUNTIME_KINDS,
    Allocator,
    CallopsMode,
    HostPort,
    ListenSocket,
    RuntimeKind,
    parse_algorithm,
    parse_datagram_socket,
    parse_dialog_store,
    parse_domain,
    parse_event,
    parse_event_socket,
    parse_hep,
    parse_listen,
    parse_match_param,
    parse_method,
    parse_mi_http,
    parse_network,
    parse_webhook,
    show_hep,
    show_mi_http,
)

STRING: Final = Text(str)
BOOL: Final = Bool()


@dataclass(frozen=True, slots=True)
class ListenConfig:
    sockets: tuple[ListenSocket, ...] = field(
        default=(ListenSocket("udp", "127.0.0.1", 5060),),
        metadata=setting(
            TextList(parse_listen, at_least_one="at least one socket is needed"),
            "udp:IP:PORT / tcp: / tls: / ws: / wss: (WebSocket, RFC 7118), IPv6 as "
            "udp:[::1]:5060; port 0 picks a free one. The address goes into Via and "
            "Record-Route: use one the UAs reach (not 0.0.0.0). tls and wss need [tls].",
            flag=Flag("--listen",
                      "SIP socket to listen on (repeatable; replaces [listen] sockets).",
                      "udp|tcp|tls|ws|wss:IP:PORT"),
        ),
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for `tls:` and `wss:` listeners and for the TLS connections we open (RFC 3261
    §26, RFC 5630). The files are read again on SIGHUP."""

    certificate: str = field(default="", metadata=setting(
        FilePath(), "PEM certificate chain we present (our certificate first); needed by "
        "tls and wss listeners"))
    private_key: str = field(default="", metadata=setting(
        FilePath(), 'PEM private key of the certificate; "" = in the certificate file'))
    ca_file: str = field(default="", metadata=setting(
        FilePath(), "PEM CAs that peers' certificates are verified against; \"\" = the "
        "system's store"))
    verify_peer: bool = field(default=True, metadata=setting(
        BOOL, "verify the certificate and name of the TLS servers we connect to"))
    require_client_certificate: bool = field(default=False, metadata=setting(
        BOOL, "refuse TLS clients that present no certificate signed by ca_file"))
    handshake_timeout: int = field(default=10, metadata=setting(
        Int(1), "seconds a TLS handshake may take before the connection is closed"))


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """SIP over WebSocket (RFC 7118) on `ws:` and `wss:` listeners."""

    ping_interval: int = field(default=30, metadata=setting(
        Int(0), "seconds between our pings (keeping NAT bindings open); a peer that does "
        "not answer one is closed (0 = no pings)"))
    max_message_size: int = field(default=65535, metadata=setting(
        Int(1024, MAX_MESSAGE_SIZE), "largest frame (one SIP message) accepted, in bytes; a "
        "larger one closes the connection (1009)"))
    handshake_timeout: int = field(default=10, metadata=setting(
        Int(1), "seconds from connecting to the end of the HTTP upgrade"))


@dataclass(frozen=True, slots=True)
class MIConfig:
    http: HostPort | None = field(
        default=HostPort("127.0.0.1", 8888),
        metadata=setting(
            Text(parse_mi_http, show_mi_http),
            'management HTTP server (/mi, /metrics, /livez, /readyz); "" disables it',
            flag=Flag("--mi-http", 'MI HTTP address ("" disables the MI).', "IP:PORT"),
        ),
    )
    token: str = field(default="", metadata=setting(
        STRING, 'bearer token required on /mi; "" = none', secret=True))


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    kind: RuntimeKind = field(default="local", metadata=setting(
        Choice(RUNTIME_KINDS), "local | ray",
        flag=Flag("--runtime", "Runtime (default local).")))
    ray_address: str = field(default="", metadata=setting(
        STRING, 'Ray cluster for kind = "ray"; "" = a private one',
        flag=Flag("--ray-address", "Ray cluster address for --runtime ray.", "ADDR")))
    workers: int = field(default=0, metadata=setting(
        Int(0), "worker count for ray; 0 = one per CPU",
        flag=Flag("--workers", "Worker count; 0 = one per CPU.", "N")))
    shared_port: bool = field(default=True, metadata=setting(
        BOOL, "ray: the workers of a node share each listen address (SO_REUSEPORT) and hand "
        "every message to the worker that owns it; false = worker i listens on port + i"))
    drain_timeout: int = field(default=3, metadata=setting(
        Int(0), "on SIGTERM or MI kill: seconds transactions in flight may take to finish "
        "(new INVITEs get 503) before the node stops"))
    allocator: Allocator = field(default="python", metadata=setting(
        Choice(ALLOCATORS), "local: python (CPython's, the fastest) | mimalloc (gives the "
        "memory of ended calls back to the system; needs libmimalloc2.0, costs CPU)"))


@dataclass(frozen=True, slots=True)
class CallopsConfig:
    mode: CallopsMode = field(default="param", metadata=setting(
        Choice(CALLOPS_MODES), "how a transferred call is linked: param | manual | callid",
        flag=Flag("--mode", "How a transferred call is linked back to the old one.")))
    match_param: str = field(default="osid", metadata=setting(
        Text(parse_match_param), "Refer-To URI parameter carrying the dialog id (param mode)",
        flag=Flag("--match-param", "Refer-To URI parameter for --mode param.", "NAME")))


@dataclass(frozen=True, slots=True)
class TransferConfig:
    end_old_call: bool = field(default=True, metadata=setting(
        BOOL, "after a successful transfer, BYE the old call"))


@dataclass(frozen=True, slots=True)
class EventSubscription:
    event: str = field(metadata=setting(
        Text(parse_event), " | ".join(KNOWN_EVENTS), example="E_CALL_TRANSFER"))
    socket: str = field(metadata=setting(
        Text(parse_event_socket), "udp:IP:PORT, tcp:IP:PORT or an http(s):// webhook URL",
        example="tcp:127.0.0.1:9000"))


@dataclass(frozen=True, slots=True)
class EventsConfig:
    datagram: tuple[str, ...] = field(default=(), metadata=setting(
        TextList(parse_datagram_socket), "udp:IP:PORT sinks that get every event",
        flag=Flag("--event-datagram",
                  "Send every event to this socket (repeatable; static subscription).",
                  "udp:IP:PORT")))
    webhooks: tuple[str, ...] = field(default=(), metadata=setting(
        TextList(parse_webhook, unique=True),
        "http:// or https:// URLs that get every event as a signed POST (needs "
        "webhook_secret)",
        flag=Flag("--event-webhook",
                  "POST every event to this URL, signed (repeatable; needs [events] "
                  "webhook_secret).", "URL")))
    webhook_secret: str = field(default="", metadata=setting(
        STRING, "key of the HMAC-SHA256 signature every webhook request carries "
        "(X-Switchboard-Signature)", secret=True))
    webhook_timeout: int = field(default=5, metadata=setting(
        Int(1), "seconds one webhook request may take before it is retried"))
    webhook_retries: int = field(default=5, metadata=setting(
        Int(0), "retries of an event after a 5xx, a timeout or a refused connection, "
        "0.5 s apart and doubling (a 4xx is not retried)"))
    webhook_queue: int = field(default=1024, metadata=setting(
        Int(1), "events waiting per webhook; more are dropped and counted"))
    subscribe: tuple[EventSubscription, ...] = field(default=(), metadata=setting(
        Tables(EventSubscription), "static subscriptions (never expire), any number of them"))

    def static_subscriptions(self) -> tuple[EventSubscription, ...]:
        """Every static (event, socket) pair: each datagram socket and each webhook for
        every known event, then the explicit subscriptions; duplicates removed, order kept."""
        pairs = [EventSubscription(e, s) for s in (*self.datagram, *self.webhooks)
                 for e in KNOWN_EVENTS]
        pairs.extend(self.subscribe)
        return tuple(dict.fromkeys(pairs))

    def missing_secret(self) -> bool:
        """Whether a static subscription goes to a webhook while no secret is set to sign
        its requests with (checked once the flags are applied: `--event-webhook`)."""
        return not self.webhook_secret and any(
            s.socket.startswith(("http://", "https://")) for s in self.static_subscriptions())


@dataclass(frozen=True, slots=True)
class DialogConfig:
    lifetime: int = field(default=43200, metadata=setting(
        Int(1), "seconds a confirmed dialog may live, then BYE both ways"))
    store: str = field(default="", metadata=setting(
        Text(parse_dialog_store), "sqlite:PATH: confirmed dialogs are kept there and read "
        'back at start (local runtime); "" = in memory only'))
    store_interval_ms: int = field(default=200, metadata=setting(
        Int(10, 60000), "milliseconds between two writes of the dialogs that changed"))


@dataclass(frozen=True, slots=True)
class ProxySection:
    """The `[proxy]` section. The proxy core's settings (`switchboard.sip.proxy.ProxyConfig`)
    are made from the whole configuration by `cluster/local.py:proxy_config`."""

    domains: tuple[str, ...] = field(default=(), metadata=setting(
        TextList(parse_domain), "domains the registrar serves besides our own addresses"))
    record_route: bool = field(default=True, metadata=setting(
        BOOL, "add our Record-Route to new requests (not REGISTER), so that the rest of each "
        "dialog passes through us"))
    trusted: tuple[str, ...] = field(default=("127.0.0.0/8", "::1/128"), metadata=setting(
        TextList(parse_network), "sources that may relay anywhere; others only toward our "
        "domains and registered users (else 403)"))
    route_secret: str = field(default="", metadata=setting(
        STRING, "key signing our Record-Route (an untrusted source's in-dialog request needs "
        'it or a known dialog, else 481); "" = random at first start, kept in the [dialog] '
        "store if there is one, else new at each start", secret=True))


@dataclass(frozen=True, slots=True)
class ScriptConfig:
    path: str = field(default="", metadata=setting(
        FilePath(), "routing script (Python file), as --script",
        flag=Flag("--script", "Routing script (Python file).")))


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: LogFormat = field(default="text", metadata=setting(
        Choice(LOG_FORMATS), "text (for a terminal) | json (one object per line)",
        flag=Flag("--log-format", "Log as text or JSON lines.")))
    level: str = field(default="info", metadata=setting(
        Choice(LOG_LEVELS, fold_case=True), " | ".join(LOG_LEVELS),
        flag=Flag("--log-level",
                  "Lowest level logged (default info; env SWITCHBOARD_LOG_LEVEL).")))


@dataclass(frozen=True, slots=True)
class HepConfig:
    collector: HostPort | None = field(default=None, metadata=setting(
        Text(parse_hep, show_hep), 'udp:IP:PORT of a HEP v3 collector; "" = no capture',
        flag=Flag("--hep",
                  'Send a HEP v3 copy of every SIP message to this collector ("" disables).',
                  "udp:IP:PORT")))
    capture_id: int = field(default=1, metadata=setting(
        Int(0, MAX_CAPTURE_ID), f"HEP capture agent id, 0..{MAX_CAPTURE_ID}"))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Protection against floods and abuse; trusted networks are exempt from the rate limit."""

    rate: int = field(default=200, metadata=setting(
        Int(0), "requests/s one untrusted source may send (0 = off)"))
    burst: int = field(default=400, metadata=setting(
        Int(0), "requests it may send at once"))
    tcp_connections_per_source: int = field(default=64, metadata=setting(
        Int(0), "inbound connections (TCP, TLS, WS, WSS) per source address and listener "
        "(0 = any)"))
    tcp_idle_timeout: int = field(default=600, metadata=setting(
        Int(0), "seconds of silence before a TCP or TLS connection is closed (WebSocket: "
        "when websocket.ping_interval is 0)"))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Digest authentication; off while `users` is empty."""

    realm: str = field(default="", metadata=setting(
        STRING, '"" = the first proxy domain, else the listen address'))
    users: tuple[tuple[str, str], ...] = field(default=(), metadata=setting(
        Users(), 'user = "password"; empty = no authentication', secret=True))
    invites: bool = field(default=True, metadata=setting(
        BOOL, "false: never challenge INVITEs"))
    # REGISTER is always challenged (401), whatever `methods` says.
    methods: tuple[str, ...] = field(default=("*",), metadata=setting(
        TextList(parse_method), "new requests from untrusted sources that must authenticate "
        '(407); "*" = every method but ACK and CANCEL'))
    # MD5 first by default: SIPp 3.6 and many older phones read only the first challenge and
    # know no SHA-256; put SHA-256 first where every client has it.
    algorithms: tuple[str, ...] = field(default=("MD5", "SHA-256"), metadata=setting(
        TextList(parse_algorithm, at_least_one="needs at least one algorithm", unique=True),
        "digest algorithms offered, the preferred first"))
    nonce_ttl: int = field(default=300, metadata=setting(
        Int(1), "seconds a nonce may be used (each nc once)"))
    max_failures: int = field(default=5, metadata=setting(
        Int(0), "failed digests from one source before it is banned"))
    user_max_failures: int = field(default=20, metadata=setting(
        Int(0), "failures for one user from any sources; past it every failing source is "
        "banned at once (0 = off)"))
    failure_window: int = field(default=600, metadata=setting(
        Int(1), "seconds a failure is counted"))
    ban_time: int = field(default=900, metadata=setting(
        Int(0), "seconds a banned source's messages are dropped unanswered"))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one field a section. Every key has a default, so `Config()`
    is a valid configuration."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    mi: MIConfig = field(default_factory=MIConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    callops: CallopsConfig = field(default_factory=CallopsConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    proxy: ProxySection = field(default_factory=ProxySection)
    script: ScriptConfig = field(default_factory=ScriptConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hep: HepConfig = field(default_factory=HepConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
