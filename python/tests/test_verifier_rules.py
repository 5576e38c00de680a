"""The verifier's pure rules, without a broker: scope coverage, the revocation
set, strict token decoding, freshness, bearer headers and the refusals' answers.
The cases are the Rust verifier's own (src/verifier, src/domain/scope.rs)."""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

from mayfly._revocations import FeedState, Revocation, RevocationSet, unix_seconds
from mayfly._token import b64url, keys_from_jwks
from mayfly.resource import BearerError, ProtectedResource, bearer_token
from mayfly.verifier import Checker, Claims, Refused, RequiredScope, RequiredScopeError, Verdict, thumbprint

ISS, AUD, AGENT = "https://mayfly.example", "crm-api", "spiffe://example.org/agent/a"
CERT = b"the DER of the agent's certificate"
HOUR = 3600


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISS,
        "sub": AGENT,
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": "j1",
        "scope": "read:customers/eu/*",
        "task": "t1",
        "wf": "support-triage",
        "cnf": {"x5t#S256": thumbprint(CERT)},
        "client_id": AGENT,
    }
    c.update(over)
    return c


class Signer:
    """An Ed25519 key of the test's own, with a kid, and the checker trusting it."""

    def __init__(self, kid: str = "k1") -> None:
        self.key, self.kid = Ed25519PrivateKey.generate(), kid

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """A compact JWS of ``payload``; a header member given as None is left out."""
        h = {
            k: v
            for k, v in {"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid, **header}.items()
            if v is not None
        }
        signing_input = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(payload).encode())}"
        return f"{signing_input}.{b64(self.key.sign(signing_input.encode()))}"

    def checker(self, **kw: Any) -> Checker:
        c = Checker(ISS, AUD, {self.kid: VerifyKey(self.key.public_key().public_bytes_raw())}, **kw)
        c.feed("heartbeat", json.dumps({"head": 0}))
        return c


def verdict(c: Checker, token: str, cert: bytes = CERT, need: str | None = "customers/eu/42") -> Verdict:
    with pytest.raises(Refused) as e:
        c.check(token, cert, RequiredScope("read", need) if need else None)
    return e.value.verdict


def test_a_token_scope_covers_the_action_on_matching_resources_only() -> None:
    r = RequiredScope("read", "customers/eu/42")
    for claim in [
        "read:customers/eu/42",
        "read:customers/eu/*",
        "read:customers/**",
        "read:*/eu/42",
        "*:customers/**",
    ]:
        assert r.is_covered_by(claim), claim
    for claim in [
        "write:customers/eu/42",
        "read:customers/us/*",
        "read:customers/eu",
        "read:customers/eu/42/notes",
        "read:customers/*",
        "read",
        "",
    ]:
        assert not r.is_covered_by(claim), claim
    assert not RequiredScope("read", "customers/eu").is_covered_by("read:customers/eu/**")
    assert RequiredScope("read", "customers/eu/42/notes/1").is_covered_by("read:customers/eu/**")


@pytest.mark.parametrize(
    ("action", "resource"),
    [("read", "customers/*"), ("read", "customers/**"), ("*", "customers/1"), ("read", "customers/../admin"),
     ("read", ""), ("read", "a//b"), ("re ad", "a"), ("read", "a b"), ("read", "a" * 513), ("read", "cust*/1")],
)  # fmt: skip
def test_a_required_scope_names_one_action_on_one_concrete_resource(action: str, resource: str) -> None:
    with pytest.raises(RequiredScopeError):
        RequiredScope(action, resource)


def rev(seq: int, kind: str, value: str, at: int) -> Revocation:
    return Revocation(seq, kind, value, at)


def c_(jti: str = "j", task: str = "t", sub: str = "a", iat: int = 900, **kw: Any) -> Claims:
    base: dict[str, Any] = dict(
        iss="i", sub=sub, aud="x", exp=iat + 300, iat=iat, nbf=iat, jti=jti, scope="s"
    )
    base.update(task=task, wf="support", x5t_s256="x", client_id=sub)
    base.update(kw)
    return Claims(**base)


def test_the_revocation_set_applies_each_target_as_the_rust_verifier_does() -> None:
    s = RevocationSet(HOUR, 5, 2)
    assert s.apply(rev(1, "token", "j1", 1000), 1000)
    assert s.apply(rev(2, "task", "t2", 1000), 1000)
    assert s.revoked(c_("j1", "t1")) == 1
    assert s.revoked(c_("j2", "t2")) == 2
    assert s.revoked(c_("j3", "t1")) is None
    assert s.revoked(c_("j9", "t9", ancestors=("j0", "j1"))) == 1, "a delegated token dies with its parent"
    s.apply(rev(7, "agent", "spiffe://td/agent/a", 1000), 1000)
    a = "spiffe://td/agent/a"
    assert [s.revoked(c_(sub=a, iat=t)) for t in (990, 1002, 1003)] == [7, 7, None], "issued up to it, skew 2"
    assert s.revoked(c_(sub="b", iat=990, act={"sub": "c", "act": {"sub": a}})) == 7, "an actor of the chain"
    s.apply(rev(8, "workflow", "support", 1000), 1000)
    assert s.revoked(c_(sub="b", iat=999)) == 8
    assert s.revoked(c_(sub="b", iat=999, wf="billing")) is None
    s.apply(rev(3, "all", "", 1000), 1000)
    s.apply(rev(9, "all", "", 2000), 2000)
    s.apply(rev(4, "all", "", 1500), 2000)
    assert s.revoked(c_(sub="z", iat=1800, wf="w")) == 9
    assert s.revoked(c_(sub="z", iat=2003, wf="w")) is None


def test_entries_are_pruned_once_every_token_they_concern_has_expired() -> None:
    s = RevocationSet(HOUR, 5, 2)
    for i, kind in enumerate(["token", "task", "agent", "workflow", "all"], 1):
        s.apply(rev(i, kind, {"token": "j", "task": "t", "agent": "a"}.get(kind, "support"), 1000), 1000)
    last = 1000 + HOUR + 5 + 2
    s.prune(last - 1)
    assert len(s) == 5
    s.prune(last)
    assert len(s) == 0
    assert not s.apply(rev(6, "task", "t", 1000), 1000 + 2 * HOUR), "old history replayed is not kept"
    s.apply(rev(1, "task", "t", 1000), 1000)
    s.apply(rev(2, "task", "t", 2000), 2000)
    s.prune(1000 + HOUR + 7)
    assert s.revoked(c_(task="t")) == 1, "kept as long as the later event asks, with the first sequence"


def test_the_feed_is_fresh_only_after_a_heartbeat_at_the_cursor_and_while_it_talks() -> None:
    clock = [0.0]
    st = FeedState(RevocationSet(HOUR, 5, 2), monotonic=lambda: clock[0])
    assert not st.is_fresh(15)
    st.handle(
        "revocation", json.dumps({"sequence": 1, "target": {"task": "t"}, "at": "2030-01-01T00:00:00Z"}), 0
    )
    assert not st.is_fresh(15), "replaying: not synced until a heartbeat"
    st.handle("heartbeat", json.dumps({"head": 1}), 0)
    assert st.is_fresh(15) and st.cursor == 1 and st.cursor_at == "2030-01-01T00:00:00Z"
    clock[0] = 15.5
    assert not st.is_fresh(15), "silent past the bound"
    st.handle("revocation", json.dumps({"sequence": 1, "target": {"task": "t"}}), 0)
    assert st.is_fresh(15), "a replayed event is not applied twice, but the broker was heard"
    for bad in [("heartbeat", '{"head": 2}'), ("revocation", "not json"), ("heartbeat", "{}")]:
        with pytest.raises(Exception, match=r"heartbeat|JSON|head") as e:
            st.handle(*bad, 0)
        assert not getattr(e.value, "resync", True)
    for resync in [("heartbeat", '{"head": 0}'), ("resync", '{"first": 1, "head": 0}')]:
        with pytest.raises(Exception) as e:
            st.handle(*resync, 0)
        assert getattr(e.value, "resync", False)
    st.resync()
    assert not st.is_fresh(15) and st.cursor == 0 and len(st.revocations) == 1, (
        "entries stay through a resync"
    )


def test_an_unknown_target_is_applied_as_all() -> None:
    st = FeedState(RevocationSet(HOUR, 5, 2))
    st.handle(
        "revocation", json.dumps({"sequence": 1, "target": {"tenant": "x"}, "at": "2030-01-01T00:00:00Z"}), 0
    )
    assert st.revocations.revoked(c_(iat=1893456000)) == 1


def test_rfc3339_times_are_read_to_the_floored_second() -> None:
    assert unix_seconds("2030-01-02T03:04:05.999Z") == 1893553445
    assert unix_seconds("2030-01-02T05:04:05+02:00") == 1893553445
    assert unix_seconds("2030-01-02 03:04:05Z") is None


def test_base64url_has_one_spelling_per_value() -> None:
    assert b64url("AQ") == b"\x01"
    for bad in ["AR", "AQ==", "A", "A+Q", "A/Q", "AQ.", "é"]:
        assert b64url(bad) is None, bad


def test_a_valid_token_passes_and_each_flaw_has_its_verdict() -> None:
    s = Signer()
    c = s.checker()
    good = s.sign(claims())
    assert c.check(good, CERT, RequiredScope("read", "customers/eu/42")).jti == "j1"
    h, p, sig = good.split(".")
    now = int(time.time())
    cases = {
        Verdict.MALFORMED: [
            "x",
            f"{h}.{p}",
            f"{h}.{p}.{sig}.x",
            f"{h}=.{p}.{sig}",
            f"{h}.{p}.{sig}=",
            f"{h}.{p}\ud800.{sig}",
            f"{h}.{p}é.{sig}",
            s.sign(claims(), typ="JWT"),
            s.sign(claims(), typ=None),
            s.sign(claims(), kid=None),
            jwt.encode(claims(), "k" * 32, algorithm="HS256", headers={"typ": "at+jwt", "kid": "k1"}),
            s.sign(claims(exp=str(now + 300))),
            s.sign(claims(aud=[AUD])),
            s.sign({k: v for k, v in claims().items() if k != "cnf"}),
        ],
        Verdict.BAD_SIGNATURE: [
            # One character of R changed (changing the last ones may change
            # nothing: S's top bits are zero in every signature).
            f"{h}.{p}.{sig[:10]}{'B' if sig[10] == 'A' else 'A'}{sig[11:]}",
            f"{h}.{b64(json.dumps(claims(scope='read:**')).encode())}.{sig}",
        ],
        Verdict.UNKNOWN_KEY: [Signer("k2").sign(claims())],
        Verdict.WRONG_ISSUER: [s.sign(claims(iss="https://other"))],
        Verdict.WRONG_AUDIENCE: [s.sign(claims(aud="billing"))],
        Verdict.EXPIRED: [s.sign(claims(exp=now - 5))],
        Verdict.NOT_YET_VALID: [s.sign(claims(nbf=now + 6))],
        Verdict.LIFETIME_EXCEEDED: [s.sign(claims(exp=now + 25 * HOUR))],
        Verdict.SCOPE_NOT_COVERED: [s.sign(claims(scope="read:customers/us/*"))],
    }
    for want, tokens in cases.items():
        for t in tokens:
            assert verdict(c, t) == want, t
    assert c.check(s.sign(claims(exp=now - 4)), CERT, None), "within the leeway"
    assert c.check(s.sign(claims(typ="x"), typ="Application/AT+JWT"), CERT, None)
    assert verdict(c, good, cert=b"another certificate") == Verdict.NOT_BOUND_TO_CLIENT


def test_a_revoked_token_is_refused_with_its_event_and_a_stale_feed_refuses_all() -> None:
    s = Signer()
    c = s.checker(state=FeedState(RevocationSet(24 * HOUR, 5, 2)))
    c.feed("revocation", json.dumps({"sequence": 1, "target": {"task": "t1"}, "at": "2099-01-01T00:00:00Z"}))
    with pytest.raises(Refused) as e:
        c.check(s.sign(claims()), CERT, None)
    assert (e.value.verdict, e.value.sequence, e.value.status) == (Verdict.REVOKED, 1, 401)
    assert "event 1" in e.value.description
    stale = Checker(ISS, AUD, {s.kid: VerifyKey(s.key.public_key().public_bytes_raw())})
    with pytest.raises(Refused) as e:
        stale.check(s.sign(claims()), CERT, None)
    assert (e.value.verdict, e.value.status, e.value.error) == (Verdict.STALE, 503, "temporarily_unavailable")


def test_misuse_is_reported_with_the_presented_thumbprint_never_for_the_right_certificate() -> None:
    s, seen = Signer(), []
    c = s.checker(report=lambda token, cl, presented, now: seen.append((token, cl.jti, presented)))
    token = s.sign(claims())
    c.check(token, CERT, None)
    assert verdict(c, token, cert=b"thief") == Verdict.NOT_BOUND_TO_CLIENT
    assert seen == [(token, "j1", thumbprint(b"thief"))]


def test_only_ed25519_signing_keys_with_a_kid_are_taken_from_a_jwks() -> None:
    x = b64(Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    doc = {"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ok"},
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
        {"kty": "OKP", "crv": "Ed25519", "x": x},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
        {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ", "kid": "short"},
        {"kty": "OKP", "crv": "Ed25519", "x": "%%%", "kid": "garbage"},
    ]}  # fmt: skip
    assert set(keys_from_jwks(json.dumps(doc))) == {"ok"}
    for bad in ['{"keys": 1}', "not json", '{"keys": [{"kty": "OKP", "kid": 1}]}']:
        with pytest.raises(ValueError):
            keys_from_jwks(bad)


def test_a_bearer_header_yields_its_one_token_and_anything_else_is_named() -> None:
    assert bearer_token([b"Bearer abc.DEF-_~+/=="]) == "abc.DEF-_~+/=="
    assert bearer_token([b"bearer   abc \t"]) == "abc"
    assert bearer_token([]) == BearerError.MISSING
    for other in [b"Basic dXNlcjpwYXNz", b"DPoP abc", b"Bearerabc"]:
        assert bearer_token([other]) == BearerError.OTHER_SCHEME
    for bad in [
        b"",
        b"Bearer",
        b"Bearer a b",
        b"Bearer a,b",
        b"Bearer =",
        b"Bearer\tabc",
        "Bearer é".encode(),
    ]:
        assert bearer_token([bad]) == BearerError.MALFORMED, bad
    assert bearer_token([b"Bearer a", b"Bearer a"]) == BearerError.REPEATED


def test_refusals_answer_as_the_mcp_authorization_spec_asks() -> None:
    tool = ProtectedResource("https://CRM.example:9443/mcp", ["https://mayfly.example.org"])
    assert tool.well_known_path == "/.well-known/oauth-protected-resource/mcp"
    meta = "https://crm.example:9443/.well-known/oauth-protected-resource/mcp"
    a = tool.answer_bearer_error(BearerError.MISSING)
    assert (a.status, a.www_authenticate) == (401, f'Bearer resource_metadata="{meta}"')
    a = tool.answer_refused(
        Refused(Verdict.SCOPE_NOT_COVERED, required=RequiredScope("read", "customers/eu/43"))
    )
    assert a.status == 403 and a.www_authenticate is not None
    assert (
        'error="insufficient_scope"' in a.www_authenticate
        and 'scope="read:customers/eu/43"' in a.www_authenticate
    )
    assert json.loads(a.body)["scope"] == "read:customers/eu/43"
    a = tool.answer_refused(Refused(Verdict.EXPIRED))
    assert (
        a.status == 401 and a.www_authenticate is not None and 'error="invalid_token"' in a.www_authenticate
    )
    a = tool.answer_refused(Refused(Verdict.STALE))
    assert (a.status, a.www_authenticate) == (503, None)
    for bad in [
        "http://crm",
        "https://u:p@crm",
        "https://crm#x",
        "https://crm?q",
        "https://crm:0",
        "https://",
    ]:
        with pytest.raises(ValueError):
            ProtectedResource(bad, ["https://mayfly"])


def test_any_text_or_header_is_a_refusal_never_an_exception() -> None:
    rng = random.Random(7)  # noqa: S311 (reproducible inputs, not keys)
    s = Signer()
    c = s.checker()
    good = s.sign(claims())
    chars = 'AZaz09-_.=+/ \t\x00é\ud800{}":,'
    for _ in range(3000):
        if rng.random() < 0.5:
            t = "".join(rng.choice(chars) for _ in range(rng.randrange(0, 40)))
        else:
            i = rng.randrange(len(good))
            t = good[:i] + rng.choice(chars) + good[i + 1 :]
            if t == good:
                continue
        with pytest.raises(Refused):
            c.check(t, CERT, None)
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
        assert isinstance(bearer_token([b"Bearer " + raw]), (str, BearerError))
