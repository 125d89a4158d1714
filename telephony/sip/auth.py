"""Digest authentication (RFC 2617 / RFC 7616, MD5 and SHA-256, qop=auth) as a client.

Used to answer 401/407 challenges on our own requests: handler legs through the proxy
and REGISTER of 'registered' lines. We never challenge others.
"""

from __future__ import annotations

import hashlib
import secrets

from telephony.errors import SipParseError

from .message import Request, Response
from .uri import split_outside

_ALGOS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def parse_challenge(value: str) -> dict[str, str]:
    """Parse ``Digest realm="x", nonce="y", qop="auth"`` into a dict (keys lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError(400, f"Unsupported auth scheme: {scheme[:20]!r}")
    out: dict[str, str] = {}
    for item in split_outside(rest, ","):
        k, eq, v = item.strip().partition("=")
        if not eq:
            continue
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1].replace('\\"', '"')
        out[k.strip().lower()] = v
    if "nonce" not in out or "realm" not in out:
        raise SipParseError(400, "Digest challenge without realm or nonce")
    return out


def authorization(challenge: dict[str, str], *, method: str, uri: str, username: str,
                  password: str, nc: int = 1, cnonce: str | None = None) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``."""
    algo = challenge.get("algorithm", "MD5").upper()
    hfunc = _ALGOS.get(algo.removesuffix("-SESS"))
    if hfunc is None:
        raise SipParseError(400, f"Unsupported digest algorithm: {algo[:20]!r}")

    def h(s: str) -> str:
        return hfunc(s.encode()).hexdigest()

    realm, nonce = challenge["realm"], challenge["nonce"]
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{username}:{realm}:{password}")
    if algo.endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in qops:
        ncv = f"{nc:08x}"
        resp = h(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
        parts += [f'response="{resp}"', "qop=auth", f"nc={ncv}", f'cnonce="{cnonce}"']
    else:
        parts.append(f'response="{h(f"{ha1}:{nonce}:{ha2}")}"')
    parts.append(f"algorithm={algo}")
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)


def answer_challenge(req: Request, resp: Response, creds: tuple[str, str]) -> tuple[str, str] | None:
    """The (Proxy-)Authorization header answering a 401/407 to ``req``; None if impossible."""
    if resp.status == 407:
        challenge, name = resp.get("Proxy-Authenticate"), "Proxy-Authorization"
    else:
        challenge, name = resp.get("WWW-Authenticate"), "Authorization"
    if not challenge:
        return None
    try:
        ch = parse_challenge(challenge)
        value = authorization(ch, method=req.method, uri=str(req.uri),
                                   username=creds[0], password=creds[1])
    except SipParseError:
        return None
    return name, value


def with_credentials(req: Request, resp: Response, creds: tuple[str, str], via: str) -> Request | None:
    """The same INVITE with credentials, a new branch and the next CSeq (RFC 3261 §22.2)."""
    hdr = answer_challenge(req, resp, creds)
    if hdr is None:
        return None
    new = Request(method=req.method, uri=req.uri, body=req.body)
    for n, v in req.headers:
        if n in ("Authorization", "Proxy-Authorization"):
            continue
        if n == "Via":
            v = via
        elif n == "CSeq":
            v = f"{req.cseq[0] + 1} {req.method}"
        new.headers.append((n, v))
    new.add(*hdr)
    return new
