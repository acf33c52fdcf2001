"""The client side of digest authentication (RFC 2617 / RFC 7616, qop=auth), computed here
independently of `sip/auth.py`: the Authorization value a UA answers a challenge with."""

from __future__ import annotations

import hashlib

from switchboard.sip.auth import parse_credentials


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def credentials(challenge: str, method: str, uri: str, user: str = "alice",
                password: str = "s3cret", nc: str = "00000001", algorithm: str = "MD5") -> str:
    params = parse_credentials(challenge)
    assert params is not None
    realm, nonce = params["realm"], params["nonce"]
    h = sha256 if algorithm == "SHA-256" else md5
    ha1 = h(f"{user}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    response = h(f"{ha1}:{nonce}:{nc}:abc:auth:{ha2}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop=auth, nc={nc}, cnonce="abc", algorithm={algorithm}')
