"""Mayfly access tokens taken apart as the Rust verifier does (``src/token/
verify.rs``): a compact JWS of exactly three strict base64url segments, an
``EdDSA``/``at+jwt`` header with a ``kid``, an Ed25519 signature checked by
libsodium (PyNaCl, PyCA's binding: its verify is about 2.4 times as fast as
OpenSSL's through ``cryptography`` here, and every check pays one), then the
claims.

Strictness is the point: a lenient decoder would accept other spellings of a
token the broker signed (padding, non-zero trailing bits), which the Rust
verifier refuses. The refusals are :class:`~mayfly.verifier.Verdict` names.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

log = logging.getLogger("mayfly.verifier")

_B64 = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_I64 = (-(2**63), 2**63 - 1)
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32

#: Keys by kid, ready to verify with.
KeySet = Mapping[str, VerifyKey]


class Verdict(str, Enum):
    """Why a check refused a token: a short, stable name for logs and metrics
    (the Rust verifier's ``Verdict::as_str``)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    LIFETIME_EXCEEDED = "lifetime_exceeded"
    REVOKED = "revoked"
    NOT_BOUND_TO_CLIENT = "not_bound_to_client"
    SCOPE_NOT_COVERED = "scope_not_covered"
    STALE = "stale"


class Bad(Exception):
    """A refusal found while taking a token apart (internal to the check)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.value)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims of a valid Mayfly access token (RFC 9068 and Mayfly's own)."""

    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    nbf: int
    jti: str
    scope: str
    task: str
    wf: str
    #: ``cnf.x5t#S256``: the thumbprint of the certificate the token is bound to.
    x5t_s256: str
    client_id: str
    #: RFC 8693 ``act``: the delegation chain, the current holder outermost.
    act: Any = None
    depth: int = 0
    #: The jtis the token was delegated from, root first.
    ancestors: tuple[str, ...] = ()

    def actors(self) -> Iterator[str]:
        """Every actor of the delegation chain, the current holder first."""
        a = self.act
        while isinstance(a, dict):
            if isinstance(a.get("sub"), str):
                yield a["sub"]
            a = a.get("act")


def b64url(segment: str) -> bytes | None:
    """Unpadded base64url, one spelling per value (no ``=``, no non-zero
    trailing bits), as Rust's ``URL_SAFE_NO_PAD`` decodes; None otherwise."""
    rem = len(segment) % 4
    if rem == 1 or not _B64.fullmatch(segment):
        return None
    if rem and _ALPHABET[segment[-1]] & (0x0F if rem == 2 else 0x03):
        return None
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a member is repeated")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """JSON as serde_json reads it: UTF-8 only, no NaN, no repeated member.
    Raises ValueError (a too deep document too)."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as e:
        raise ValueError("nested too deep") from e


def _opt_str(doc: dict[str, Any], name: str) -> str | None:
    v = doc.get(name)
    if v is not None and not isinstance(v, str):
        raise ValueError(name)
    return v


@dataclass(frozen=True, slots=True)
class Compact:
    """A compact JWS whose header is an EdDSA access-token header with a kid."""

    token: str = field(repr=False)
    kid: str
    payload: str
    signature: str

    @property
    def signing_input(self) -> bytes:
        return self.token[: self.token.rfind(".")].encode()


class Seen:
    """What earlier checks learnt, bounded (oldest out first): the kid of each
    header seen (a broker's headers repeat), and the claims of each token whose
    signature verified, with the key object that verified it. A token
    presented again skips the Ed25519 check and the decoding, never a check of
    its claims; a JWKS refresh makes new key objects, so it is verified again."""

    def __init__(self, tokens: int, headers: int = 64) -> None:
        self._tokens: dict[str, tuple[VerifyKey, Claims]] = {}
        self._kids: dict[str, str] = {}
        self._sizes = (tokens, headers)

    def kid(self, header: str) -> str | None:
        return self._kids.get(header)

    def claims(self, token: str, key: VerifyKey) -> Claims | None:
        hit = self._tokens.get(token)
        return hit[1] if hit is not None and hit[0] is key else None

    def remember_kid(self, header: str, kid: str) -> None:
        _bounded_put(self._kids, header, kid, self._sizes[1])

    def remember(self, token: str, key: VerifyKey, claims: Claims) -> None:
        _bounded_put(self._tokens, token, (key, claims), self._sizes[0])


def _bounded_put(d: dict[str, Any], k: str, v: Any, size: int) -> None:
    if size <= 0:
        return
    while len(d) >= size:
        try:
            d.pop(next(iter(d)), None)
        except (StopIteration, RuntimeError):  # emptied or changed by another thread
            break
    d[k] = v


def split(token: str, seen: Seen | None = None) -> Compact:
    """The token's segments and kid, without verifying anything; raises
    :class:`Bad` (malformed) for anything but an ``EdDSA``, ``at+jwt`` JWS."""
    parts = token.split(".")
    # A bearer token is ASCII (RFC 6750 b64token); anything else is not ours.
    if len(parts) != 3 or not token.isascii():
        raise Bad(Verdict.MALFORMED)
    header, payload, signature = parts
    known = seen.kid(header) if seen is not None else None
    if known is not None:
        return Compact(token, known, payload, signature)
    raw = b64url(header)
    try:
        if raw is None:
            raise ValueError("header")
        doc = strict_json(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("alg"), str):
            raise ValueError("header")
        typ, kid = _opt_str(doc, "typ"), _opt_str(doc, "kid")
    except ValueError:
        raise Bad(Verdict.MALFORMED) from None
    # RFC 9068 §4: "at+jwt" or "application/at+jwt", ASCII case-insensitive.
    typ_ok = typ is not None and typ.isascii() and typ.lower() in ("at+jwt", "application/at+jwt")
    if doc["alg"] != "EdDSA" or not typ_ok or kid is None:
        raise Bad(Verdict.MALFORMED)
    if seen is not None:
        seen.remember_kid(header, kid)
    return Compact(token, kid, payload, signature)


def _int(doc: dict[str, Any], name: str, lo: int = _I64[0], hi: int = _I64[1]) -> int:
    v = doc[name]
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(name)
    return v


def _str(doc: dict[str, Any], name: str) -> str:
    v = doc[name]
    if not isinstance(v, str):
        raise ValueError(name)
    return v


def claims_of(payload: bytes) -> Claims:
    """The claims, typed as the Rust ``Claims`` deserializes them; raises
    ValueError or KeyError for anything else."""
    doc = strict_json(payload)
    if not isinstance(doc, dict):
        raise ValueError("claims")
    cnf = doc["cnf"]
    if not isinstance(cnf, dict):
        raise ValueError("cnf")
    ancestors = doc.get("ancestors", [])
    if not isinstance(ancestors, list) or not all(isinstance(a, str) for a in ancestors):
        raise ValueError("ancestors")
    return Claims(
        iss=_str(doc, "iss"),
        sub=_str(doc, "sub"),
        aud=_str(doc, "aud"),
        exp=_int(doc, "exp"),
        iat=_int(doc, "iat"),
        nbf=_int(doc, "nbf"),
        jti=_str(doc, "jti"),
        scope=_str(doc, "scope"),
        task=_str(doc, "task"),
        wf=_str(doc, "wf"),
        x5t_s256=_str(cnf, "x5t#S256"),
        client_id=_str(doc, "client_id"),
        act=doc.get("act"),
        depth=_int(doc, "depth", 0, 2**32 - 1) if "depth" in doc else 0,
        ancestors=tuple(ancestors),
    )


def verify(jws: Compact, keys: KeySet, now: int, leeway: int, seen: Seen | None = None) -> Claims:
    """Signature, claims and time window (``now`` in Unix seconds, ``leeway``
    either side), in the Rust verifier's order; raises :class:`Bad`."""
    key = keys.get(jws.kid)
    if key is None:
        raise Bad(Verdict.UNKNOWN_KEY)
    c = seen.claims(jws.token, key) if seen is not None else None
    if c is None:
        sig = b64url(jws.signature)
        if sig is None:
            raise Bad(Verdict.MALFORMED)
        if len(sig) != SIGNATURE_BYTES or not _signed(key, jws.signing_input, sig):
            raise Bad(Verdict.BAD_SIGNATURE)
        raw = b64url(jws.payload)
        try:
            if raw is None:
                raise ValueError("claims")
            c = claims_of(raw)
        except (ValueError, KeyError):
            raise Bad(Verdict.MALFORMED) from None
        if seen is not None:
            seen.remember(jws.token, key, c)
    if now >= c.exp + leeway:
        raise Bad(Verdict.EXPIRED)
    if now + leeway < c.nbf:
        raise Bad(Verdict.NOT_YET_VALID)
    return c


def _signed(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    """Ed25519 (RFC 8032) as libsodium checks it: canonical ``S``, no
    small-order points."""
    try:
        key.verify(message, signature)
    except BadSignatureError:
        return False
    return True


def keys_from_jwks(raw: bytes | str) -> dict[str, VerifyKey]:
    """The Ed25519 signing keys of a JWKS (RFC 7517) with a kid; other keys are
    skipped (and logged) so one odd key does not fail every token. Raises
    ValueError when the document is not a key set, like ``key_set_from_jwks``."""
    doc = strict_json(raw.encode() if isinstance(raw, str) else raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("the JWKS is not a JSON key set")
    keys: dict[str, VerifyKey] = {}
    for k in doc["keys"]:
        if not isinstance(k, dict) or not isinstance(k.get("kty"), str):
            raise ValueError("a JWKS key has no kty")
        fields = {}
        for name in ("crv", "x", "kid"):
            v = k.get(name, "")
            if not isinstance(v, str):
                raise ValueError(f"a JWKS key's {name} is not a string")
            fields[name] = v
        alg, use = _opt_str(k, "alg"), _opt_str(k, "use")
        usable = (
            k["kty"] == "OKP"
            and fields["crv"] == "Ed25519"
            and fields["kid"] != ""
            and alg in (None, "EdDSA")
            and use in (None, "sig")
        )
        raw_key = b64url(fields["x"]) if usable else None
        if raw_key is None or len(raw_key) != PUBLIC_KEY_BYTES:
            log.warning(
                "JWKS key %.64r (%.16r) is not an Ed25519 signing key; ignored", fields["kid"], k["kty"]
            )
            continue
        keys[fields["kid"]] = VerifyKey(raw_key)
    return keys
