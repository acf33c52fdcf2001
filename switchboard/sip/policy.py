"""Who may make the proxy do what: trusted networks, the per-source rate, digest
authentication and the bans that follow failed guesses, and the signature on our own
Record-Route that lets an in-dialog request from an untrusted source through
(`docs/security.md` is the threat model).

Decides; answers nothing and sends nothing: the proxy applies the verdicts.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable

from .addressing import target
from .auth import DigestAuth
from .guard import AuthGuard, GuardSettings
from .memo import remember
from .message import Request
from .uri import SipUri


class Policy:
    def __init__(self, *, trusted: Iterable[str], rate: float, burst: float,
                 route_secret: str, rand: Callable[[], str], auth_realm: str = "",
                 auth_users: Iterable[tuple[str, str]] = (), auth_methods: Iterable[str] = ("*",),
                 auth_invites: bool = True, auth_algorithms: Iterable[str] = ("MD5", "SHA-256"),
                 auth_nonce_ttl: float = 300.0,
                 auth_guard: GuardSettings | None = None) -> None:
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self._trust_cache: dict[str, bool] = {}
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill]
        users = dict(auth_users)
        self.auth: DigestAuth | None = None
        self.guard: AuthGuard | None = None
        if users:
            secret = "".join(rand() for _ in range(8)).encode()
            self.auth = DigestAuth(auth_realm, users, secret, auth_nonce_ttl,
                                   tuple(auth_algorithms))
            self.guard = AuthGuard(auth_guard or GuardSettings())
        methods = {m.upper() for m in auth_methods}
        self._challenge_all = "*" in methods
        self._challenge_methods = frozenset(methods - {"*"})
        self._challenge_never = frozenset({"ACK", "CANCEL", "REGISTER"}
                                          | (set() if auth_invites else {"INVITE"}))
        secret = (route_secret.encode() if route_secret
                  else "".join(rand() for _ in range(8)).encode())
        self._route_key = hashlib.sha256(secret).digest()  # blake2s takes 32 bytes of key

    # -- sources -------------------------------------------------------------------------

    def is_trusted(self, host: str) -> bool:
        trusted = self._trust_cache.get(host)
        if trusted is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = any(ip in net for net in self._trusted)
            remember(self._trust_cache, host, trusted)
        return trusted

    def allowed(self, host: str, now: float) -> bool:
        """Per-source token bucket for untrusted sources."""
        if self.is_trusted(host):
            return True
        rate, burst = self.rate, self.burst
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) > 65536:  # forget sources quiet for a minute
                self._buckets = {h: b for h, b in self._buckets.items() if now - b[1] < 60}
            bucket = self._buckets[host] = [burst, now]
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    # -- authentication --------------------------------------------------------------------

    def challenged(self, method: str, req: Request, is_own: Callable[[SipUri], bool]) -> bool:
        """Whether a new request of `method` from an untrusted source must authenticate."""
        if self.auth is None or method in self._challenge_never:
            return False
        if method == "OPTIONS":
            ruri = req.ruri
            if isinstance(ruri, SipUri) and not ruri.user and is_own(ruri):
                return False  # a keep-alive ping of the proxy itself names nobody
        return self._challenge_all or method in self._challenge_methods

    # -- our signed Record-Route -------------------------------------------------------------

    def sign(self, call_id: str, tag: str, remote_target: str) -> str:
        """The signature our Record-Route carries: the dialog (Call-ID, caller's tag) and
        the remote target that requests along this route go to."""
        data = f"{call_id}\0{tag}\0{remote_target}".encode("utf-8", "surrogateescape")
        return hashlib.blake2s(data, key=self._route_key, digest_size=8).hexdigest()

    def signed_for(self, req: Request, signature: str) -> bool:
        """Our route was signed for this request's dialog and Request-URI: the caller's tag
        is its From tag (caller to callee) or its To tag (the other way)."""
        if not signature:
            return False
        call_id, remote_target = req.call_id, target(req.ruri)
        return any(tag is not None and signature == self.sign(call_id, tag, remote_target)
                   for tag in (req.from_tag, req.to_tag))
