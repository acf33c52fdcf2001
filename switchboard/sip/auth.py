"""Digest authentication (RFC 3261 §22.4, RFC 7616, RFC 8760: SHA-256 and MD5, qop=auth) for
the registrar and for requests from untrusted sources.

Credentials cannot be replayed: every nonce we hand out is remembered with the highest nonce
count (`nc`) seen for it, and a request must count up (qop=auth) or use its nonce once (no
qop). A nonce we do not remember (too old, pushed out by newer ones, from another process)
is answered with a fresh challenge marked `stale=true`. The `uri` of the credentials must be
the request's own Request-URI and the `realm` ours (RFC 7616 §3.4.6), so a header captured
from one request proves nothing for another.

`check` also tells a guess from an honest miss: `Verdict.failed` is set when credentials for
our realm were given and were wrong (unknown user, wrong password, a nonce we never made),
which the proxy counts against the source (`sip/guard.py`). Time and the secret come in as
arguments; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# RFC 8760 §2: the algorithms a SIP digest may name, and their hash.
ALGORITHMS: dict[str, Callable[[str], str]] = {"SHA-256": _sha256, "MD5": _md5}


def _same(a: str, b: str) -> bool:
    """A constant-time comparison that takes any text off the wire (compare_digest refuses
    `str` that is not ASCII)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"),
                               b.encode("utf-8", "surrogateescape"))


def parse_credentials(value: str) -> dict[str, str] | None:
    """`Digest username="a", realm="r", ...` → its parameters (names lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        quoted = m.group(2)
        params[m.group(1).lower()] = (
            quoted.replace('\\"', '"') if quoted is not None else m.group(3))
        pos = m.end()
    return params


@dataclass(frozen=True, slots=True)
class Verdict:
    user: str | None  # the authenticated user, or None
    stale: bool = False  # the credentials were right but the nonce is not (or no longer) ours
    failed: bool = False  # credentials for our realm that were wrong: a guess
    claimed: str = ""  # the user name the credentials gave, for the security log


_NONE = Verdict(None)


class DigestAuth:
    def __init__(self, realm: str, users: Mapping[str, str], secret: bytes,
                 nonce_ttl: float = 300.0, algorithms: Sequence[str] = ("MD5", "SHA-256"),
                 max_nonces: int = 65536) -> None:
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"digest algorithms must be among {', '.join(ALGORITHMS)}")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self._ha1 = {
            name: {user: ALGORITHMS[name](f"{user}:{realm}:{password}")
                   for user, password in users.items()}
            for name in ALGORITHMS
        }
        self._secret = secret
        self.nonce_ttl = nonce_ttl
        self.max_nonces = max_nonces
        # nonce -> [time issued, highest nc used (-1: none yet)]; insertion order is age order.
        self._nonces: dict[str, list[float]] = {}
        self._serial = 0

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()[:24]

    def _forget_old(self, now: float) -> None:
        nonces = self._nonces
        while nonces:
            oldest = next(iter(nonces))
            if now - nonces[oldest][0] <= self.nonce_ttl and len(nonces) < self.max_nonces:
                return
            del nonces[oldest]

    def new_nonce(self, now: float) -> str:
        self._forget_old(now)
        self._serial += 1
        stamp = f"{int(now * 1000):x}.{self._serial:x}"
        nonce = f"{stamp}.{self._mac(stamp)}"
        self._nonces[nonce] = [now, -1.0]
        return nonce

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """The WWW-Authenticate / Proxy-Authenticate values: one per algorithm, the preferred
        first (RFC 8760 §2.4), all with the same nonce."""
        nonce = self.new_nonce(now)
        tail = ", stale=true" if stale else ""
        return [f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", '
                f"algorithm={name}{tail}" for name in self.algorithms]

    def challenge(self, now: float, stale: bool = False) -> str:
        """The first (preferred) challenge alone."""
        return self.challenges(now, stale)[0]

    def check(self, value: str | None, method: str, uri: str, now: float) -> Verdict:
        """Verify an Authorization / Proxy-Authorization value for a request of `method`
        whose Request-URI is `uri`."""
        if not value:
            return _NONE
        params = parse_credentials(value)
        if params is None or params.get("realm") != self.realm:
            return _NONE  # not meant for us (another realm): a challenge, not a guess
        user = params.get("username", "")
        failed = Verdict(None, failed=True, claimed=user)
        algorithm = params.get("algorithm", "MD5").upper()
        ha1 = self._ha1.get(algorithm, {}).get(user)
        nonce = params.get("nonce", "")
        stamp, _, mac = nonce.rpartition(".")
        if (ha1 is None or algorithm not in self.algorithms
                or not _same(mac, self._mac(stamp)) or params.get("uri") != uri):
            return failed
        digest = ALGORITHMS[algorithm]
        ha2 = digest(f"{method}:{uri}")
        qop = params.get("qop")
        nc_text = params.get("nc", "")
        if qop is None:
            expected = digest(f"{ha1}:{nonce}:{ha2}")
        elif qop == "auth":
            expected = digest(f"{ha1}:{nonce}:{nc_text}:{params.get('cnonce', '')}:auth:{ha2}")
        else:
            return failed
        if not _same(expected, params.get("response", "")):
            return failed
        # The password is right; now the nonce must be live and this use of it new.
        entry = self._nonces.get(nonce)
        if entry is None or now - entry[0] > self.nonce_ttl:
            return Verdict(None, stale=True, claimed=user)
        if qop is None:
            count = float("inf")  # RFC 2069 style: the nonce is good for one request
            if entry[1] >= 0:
                return Verdict(None, stale=True, claimed=user)
        else:
            try:
                count = float(int(nc_text, 16))
            except ValueError:
                return failed
            if count <= entry[1]:
                return Verdict(None, stale=True, claimed=user)  # a replay
        entry[1] = count
        return Verdict(user, claimed=user)
