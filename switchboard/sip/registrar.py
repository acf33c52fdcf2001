"""An in-memory location service and the REGISTER procedure (RFC 3261 §10.3).

Bindings map an address-of-record to contacts with an expiry. The proxy core asks
`lookup(aor_key, now)` to retarget requests for a registered user. Time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ParseError
from .message import Request, Response, build_response
from .uri import SipUri
from .wire import Address

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60
MAX_EXPIRES = 86400


@dataclass(slots=True)
class Binding:
    contact: str  # the contact URI as registered
    expires_at: float
    call_id: str
    cseq: int
    source: Address  # where the REGISTER came from (NAT-friendly delivery, RFC 5626 spirit)
    local: Address
    q: float = 1.0


def aor_key(uri: SipUri) -> str:
    """Addresses of record compare by user and host, case-folded (RFC 3261 §10.3 step 5)."""
    return f"{uri.user or ''}@{uri.host.lower()}"


class Location:
    __slots__ = ("_bindings",)

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}

    def lookup(self, key: str, now: float) -> list[Binding]:
        bindings = self._bindings.get(key)
        if not bindings:
            return []
        live = [b for b in bindings if b.expires_at > now]
        if len(live) != len(bindings):
            if live:
                self._bindings[key] = live
            else:
                del self._bindings[key]
        # Most preferred first, newest first among equals.
        return sorted(live, key=lambda b: (-b.q, -b.expires_at))

    def purge(self, now: float) -> None:
        for key in list(self._bindings):
            self.lookup(key, now)

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    def register(self, request: Request, key: str, source: Address, local: Address,
                 now: float, to_tag: str) -> Response:
        """Apply a REGISTER to the bindings of `key` and build the answer."""
        contacts = request.contacts
        header_expires = _expires(request.get("expires"))
        bindings = self._bindings.setdefault(key, [])
        call_id = request.call_id
        cseq = request.cseq.number
        if any(c.is_wildcard for c in contacts):
            # `Contact: *` is only legal alone and with Expires: 0 (§10.3 step 6).
            if len(contacts) != 1 or header_expires != 0:
                raise ParseError("wildcard Contact needs Expires: 0 and no other contact")
            self._bindings.pop(key, None)
            return build_response(request, 200, to_tag=to_tag)
        for contact in contacts:
            expires = _expires(contact.params.get("expires"))
            if expires is None:
                expires = header_expires if header_expires is not None else DEFAULT_EXPIRES
            if 0 < expires < MIN_EXPIRES:
                return build_response(request, 423, to_tag=to_tag,
                                      extra=[("Min-Expires", str(MIN_EXPIRES))])
            expires = min(expires, MAX_EXPIRES)
            uri = str(contact.uri)
            existing = next((b for b in bindings if b.contact == uri), None)
            if existing is not None:
                if existing.call_id == call_id and cseq <= existing.cseq:
                    return build_response(request, 500, "Out of order CSeq", to_tag=to_tag)
                bindings.remove(existing)
            if expires:
                q = _q(contact.params.get("q"))
                bindings.append(Binding(uri, now + expires, call_id, cseq, source, local, q))
        live = self.lookup(key, now)
        extra = [("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
                 for b in live]
        return build_response(request, 200, to_tag=to_tag, extra=extra)


def _expires(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise ParseError(f"bad expires value {value!r}")
    return min(int(value), 2**31)


def _q(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        q = float(value)
    except ValueError as exc:
        raise ParseError(f"bad q value {value!r}") from exc
    return q if 0.0 <= q <= 1.0 else 1.0
