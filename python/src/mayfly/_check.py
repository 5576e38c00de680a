"""The local check of one token, shared by :class:`~mayfly.verifier.Verifier`
and :class:`~mayfly.verifier.AsyncVerifier`: the configuration, the typed
refusal and what it answers (``src/verifier/answer.rs``), and the steps of the
Rust verifier's ``check`` in its order. No I/O.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._feed import KeyCache
from ._revocations import FeedState, RevocationSet
from ._scope import RequiredScope
from ._token import Bad, Claims, Compact, KeySet, Seen, Verdict, split, verify
from .errors import MayflyError

DEFAULT_STALENESS = 15.0

_INVALID = "invalid_token"
#: What each refusal answers (status, error, description): src/verifier/answer.rs.
_ANSWERS: dict[Verdict, tuple[int, str, str]] = {
    Verdict.MALFORMED: (401, _INVALID, "the token is not a Mayfly access token"),
    Verdict.BAD_SIGNATURE: (401, _INVALID, "the token's signature does not verify"),
    Verdict.UNKNOWN_KEY: (401, _INVALID, "the token is signed by an unknown key"),
    Verdict.WRONG_ISSUER: (401, _INVALID, "the token is from another issuer"),
    Verdict.WRONG_AUDIENCE: (401, _INVALID, "the token is for another tool"),
    Verdict.EXPIRED: (401, _INVALID, "the token has expired"),
    Verdict.NOT_YET_VALID: (401, _INVALID, "the token is not valid yet"),
    Verdict.LIFETIME_EXCEEDED: (401, _INVALID, "the token's lifetime is too long"),
    Verdict.REVOKED: (401, _INVALID, "the token is revoked"),
    # RFC 8705 §3: a bad credential for this client, not a lack of permission.
    Verdict.NOT_BOUND_TO_CLIENT: (401, _INVALID, "the token is bound to another client certificate"),
    Verdict.SCOPE_NOT_COVERED: (403, "insufficient_scope", "the token's scope does not cover this request"),
    # No challenge: the token may be fine, the verifier cannot tell right now.
    Verdict.STALE: (503, "temporarily_unavailable", "tokens cannot be checked right now; retry shortly"),
}


class Refused(MayflyError):
    """A check refused the token: ``verdict`` says why (for logs and metrics),
    ``status``/``error``/``description`` what to answer (401 ``invalid_token``,
    403 ``insufficient_scope``, 503 when stale). Never carries the token."""

    def __init__(
        self, verdict: Verdict, *, sequence: int | None = None, required: RequiredScope | None = None
    ) -> None:
        status, error, description = _ANSWERS[verdict]
        if sequence is not None:
            description = f"{description} (event {sequence})"
        super().__init__(error, description, status)
        self.verdict = verdict
        #: The revocation event that revoked it (``revoked`` only).
        self.sequence = sequence
        #: What the request needed (``scope_not_covered`` only).
        self.required = required


def thumbprint(cert_der: bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url(SHA-256(DER)) of a certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class VerifierConfig:
    """How a verifier checks tokens and follows the broker (seconds)."""

    leeway: float = 5.0
    #: Refuse everything when the broker was silent for longer; default: three
    #: heartbeats of the broker's feed (its metadata says), else 15 s.
    staleness: float | None = None
    #: The longest token lifetime the broker grants: a revocation is forgotten
    #: this long (plus leeway and skew) after it; a longer-lived token is refused.
    max_token_lifetime: float = 24 * 3600.0
    #: How far the minting replica's clock may run ahead of the revoking one.
    clock_skew: float = 2.0
    reconnect_min: float = 0.1
    reconnect_max: float = 10.0
    #: At most one JWKS refresh for an unknown kid per interval.
    key_refresh_min_interval: float = 10.0
    #: The JWKS is also refreshed on this schedule, so retired keys leave.
    key_refresh_every: float = 300.0
    #: Deadline of a JWKS fetch or a misuse report.
    request_timeout: float = 5.0
    report_misuse: bool = True
    #: How many tokens whose signature verified are remembered, so that a token
    #: presented again skips the Ed25519 check (every other check still runs);
    #: 0 verifies every time.
    remembered_tokens: int = 4096
    #: Wall-clock time, for ``exp``, ``nbf`` and revocations (Unix seconds).
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.staleness is not None and not self.staleness > 0:
            raise ValueError("staleness must be longer than zero")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("reconnect_min must be longer than zero and at most reconnect_max")
        if not (self.key_refresh_every > 0 and self.request_timeout > 0):
            raise ValueError("key_refresh_every and request_timeout must be longer than zero")
        if min(self.leeway, self.max_token_lifetime, self.clock_skew, self.key_refresh_min_interval) < 0:
            raise ValueError("durations must not be negative")


Report = Callable[[str, Claims, str, int], None]


class Checker:
    """The local check of one token against a key set and a revocation feed
    state; no I/O. ``report`` is told of binding mismatches."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        keys: KeySet | KeyCache,
        *,
        config: VerifierConfig | None = None,
        staleness: float | None = None,
        state: FeedState | None = None,
        report: Report | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        cfg = config or VerifierConfig()
        self.issuer, self.audience, self._clock = issuer, audience, cfg.clock
        self._keys = keys if isinstance(keys, KeyCache) else KeyCache(keys, cfg.key_refresh_min_interval)
        self._leeway, self._max_lifetime = int(cfg.leeway), int(cfg.max_token_lifetime)
        self.staleness = staleness or cfg.staleness or DEFAULT_STALENESS
        self.state = state or FeedState(RevocationSet(self._max_lifetime, self._leeway, int(cfg.clock_skew)))
        self._report = report
        self._seen = Seen(cfg.remembered_tokens)

    @property
    def keys(self) -> KeySet:
        return self._keys.keys

    def now(self) -> int:
        return math.floor(self._clock())

    def feed(self, event: str, data: str) -> None:
        """Applies one feed message by hand (``revocation``, ``heartbeat``…)."""
        self.state.handle(event, data, self.now())

    def begin(self, token: str) -> Compact:
        """The first steps: fresh, and a well-formed token naming a kid."""
        if not self.state.is_fresh(self.staleness):
            raise Refused(Verdict.STALE)
        try:
            return split(token, self._seen)
        except Bad as e:
            raise Refused(e.verdict) from None

    def finish(
        self, token: str, jws: Compact, keys: KeySet, cert_der: bytes, required: RequiredScope | None
    ) -> Claims:
        """The rest, in the Rust verifier's order; ``required=None`` checks
        everything but the scope (any valid token for this audience)."""
        now = self.now()
        try:
            c = verify(jws, keys, now, self._leeway, self._seen)
        except Bad as e:
            raise Refused(e.verdict) from None
        if c.iss != self.issuer:
            raise Refused(Verdict.WRONG_ISSUER)
        if c.aud != self.audience:
            raise Refused(Verdict.WRONG_AUDIENCE)
        if c.exp - c.iat > self._max_lifetime:
            raise Refused(Verdict.LIFETIME_EXCEEDED)
        # Before revocation: a stolen token is worth reporting even when its
        # task has ended (the broker audits the report all the same).
        presented = thumbprint(cert_der)
        if presented != c.x5t_s256:
            if self._report is not None:
                self._report(token, c, presented, now)
            raise Refused(Verdict.NOT_BOUND_TO_CLIENT)
        sequence = self.state.revocations.revoked(c)
        if sequence is not None:
            raise Refused(Verdict.REVOKED, sequence=sequence)
        if required is not None:
            require(c, required)
        return c

    def check(self, token: str, cert_der: bytes, required: RequiredScope | None) -> Claims:
        """The whole check with the keys at hand (an unknown kid is refused)."""
        return self.finish(token, self.begin(token), self.keys, cert_der, required)


def require(claims: Claims, required: RequiredScope) -> None:
    """Raises :class:`Refused` (``scope_not_covered``) unless the token's
    scope covers ``required``."""
    if not required.is_covered_by(claims.scope):
        raise Refused(Verdict.SCOPE_NOT_COVERED, required=required)
