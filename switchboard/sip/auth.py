"""Digest authentication (RFC 3261 §22.4, RFC 2617: MD5, qop=auth) for the registrar and for
calls from untrusted sources.

Nonces are stateless: the time they were made and an HMAC of it under a per-process secret,
so any nonce we issued can be checked without remembering it, and one older than
`nonce_ttl` is answered with a fresh challenge marked `stale=true`. Time and the secret
come in as arguments; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


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
    stale: bool = False  # the credentials were right but the nonce too old


class DigestAuth:
    def __init__(self, realm: str, users: Mapping[str, str], secret: bytes,
                 nonce_ttl: float = 300.0) -> None:
        self.realm = realm
        self._ha1 = {user: _md5(f"{user}:{realm}:{password}") for user, password in users.items()}
        self._secret = secret
        self.nonce_ttl = nonce_ttl

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]

    def challenge(self, now: float, stale: bool = False) -> str:
        """The WWW-Authenticate / Proxy-Authenticate value."""
        stamp = f"{int(now * 1000):x}"
        nonce = f"{stamp}.{self._mac(stamp)}"
        tail = ", stale=true" if stale else ""
        return (f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", '
                f"algorithm=MD5{tail}")

    def check(self, value: str | None, method: str, now: float) -> Verdict:
        """Verify an Authorization / Proxy-Authorization value for a request of `method`."""
        if not value:
            return Verdict(None)
        params = parse_credentials(value)
        if params is None or params.get("realm") != self.realm:
            return Verdict(None)
        user = params.get("username", "")
        ha1 = self._ha1.get(user)
        nonce = params.get("nonce", "")
        stamp, _, mac = nonce.partition(".")
        if ha1 is None or not hmac.compare_digest(mac, self._mac(stamp)):
            return Verdict(None)
        if params.get("algorithm", "MD5").upper() != "MD5":
            return Verdict(None)
        ha2 = _md5(f"{method}:{params.get('uri', '')}")
        qop = params.get("qop")
        if qop is None:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        elif qop == "auth":
            expected = _md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}"
                            f":auth:{ha2}")
        else:
            return Verdict(None)
        if not hmac.compare_digest(expected, params.get("response", "")):
            return Verdict(None)
        try:
            issued = int(stamp, 16) / 1000
        except ValueError:
            return Verdict(None)
        if now - issued > self.nonce_ttl:
            return Verdict(None, stale=True)
        return Verdict(user)
