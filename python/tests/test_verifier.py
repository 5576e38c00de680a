"""The verifier against the real broker: tokens minted by an agent for a task
an orchestrator opened, checked by a resource server with the ``verifier``
SVID, the revocation feed followed over mTLS (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from mayfly import (
    Agent,
    AsyncVerifier,
    Orchestrator,
    Refused,
    RequiredScope,
    Scope,
    Token,
    Verdict,
    Verifier,
    VerifierConfig,
)
from mayfly.verifier import Checker

from .conftest import AGENT, Broker

AUD, WORKFLOW = "crm-api", "support-triage"
NEED = RequiredScope("read", "customers/eu/42")
DAY = 24 * 3600.0
#: Bounds on waits: every wait polls and ends as soon as it can.
SYNC_SECONDS = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def der(broker: Broker, name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert((broker.certs / f"{name}.crt").read_text())


def metadata(broker: Broker) -> dict[str, Any]:
    """The broker's RFC 8414 metadata."""
    tls = ssl.create_default_context(cafile=str(broker.certs / "ca.pem"))
    doc: dict[str, Any] = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server", verify=tls).json()
    return doc


def eventually(what: Callable[[], bool], within: float, every: float = 0.01) -> float:
    """Polls ``what`` until it holds (the seconds it took), or fails after ``within``."""
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s")
        time.sleep(every)
    return time.monotonic() - start


def verdict(v: Verifier, token: str, cert: bytes, need: RequiredScope | None = NEED) -> Verdict | None:
    try:
        v.check(token, cert, need)
        return None
    except Refused as e:
        return e.verdict


class World:
    """An orchestrator, the agent and a started verifier on one broker."""

    def __init__(self, broker: Broker, **config: Any) -> None:
        self.broker = broker
        self.orchestrator = Orchestrator(broker.url, broker.svid("orchestrator"))
        self.agent = Agent(broker.url, broker.svid("agent"))
        self.verifier = Verifier(broker.url, broker.svid("verifier"), AUD, config=VerifierConfig(**config))
        assert self.verifier.wait_synced(SYNC_SECONDS)
        self.cert = der(broker, "agent")

    def token(self, resource: str = "customers/eu/42", ttl: int = 300) -> tuple[str, Token]:
        scope = Scope(AUD, "customers/eu/*", "read")
        task = self.orchestrator.open_task(AGENT, WORKFLOW, "answer ticket 4713", [scope])
        return task.id, self.agent.mint(task.id, AUD, resource, "read", ttl)

    def close(self) -> None:
        self.verifier.close()
        self.agent.close()
        self.orchestrator.close()


@pytest.fixture
def world(broker: Broker) -> Iterator[World]:
    w = World(broker)
    yield w
    w.close()


def test_a_valid_token_passes_with_its_claims(world: World) -> None:
    task, t = world.token()
    c = world.verifier.check(t.access_token, world.cert, NEED)
    assert (c.sub, c.aud, c.task, c.wf, c.scope) == (AGENT, AUD, task, WORKFLOW, "read:customers/eu/42")
    assert world.verifier.check(t.access_token, world.cert, None).jti == c.jti, "any valid token for the tool"
    assert verdict(world.verifier, t.access_token, world.cert, RequiredScope("read", "customers/eu/43")) == (
        Verdict.SCOPE_NOT_COVERED
    )
    assert verdict(world.verifier, t.access_token, world.cert, RequiredScope("write", "customers/eu/42")) == (
        Verdict.SCOPE_NOT_COVERED
    )


def test_a_token_for_another_tool_issuer_time_or_shape_is_refused(world: World, broker: Broker) -> None:
    _, t = world.token()
    token = t.access_token

    def checker(issuer: str = broker.url, audience: str = AUD, **config: Any) -> Checker:
        """The same check with the broker's keys, configured otherwise."""
        c = Checker(issuer, audience, world.verifier.keys, config=VerifierConfig(**config))
        c.feed("heartbeat", json.dumps({"head": 0}))
        return c

    for c, why in [
        (checker(audience="billing-api"), Verdict.WRONG_AUDIENCE),
        (checker(issuer="https://mayfly.elsewhere"), Verdict.WRONG_ISSUER),
        (checker(clock=lambda: time.time() + 3600), Verdict.EXPIRED),
        (checker(clock=lambda: time.time() - 3600), Verdict.NOT_YET_VALID),
        (checker(max_token_lifetime=60), Verdict.LIFETIME_EXCEEDED),
    ]:
        with pytest.raises(Refused) as e:
            c.check(token, world.cert, NEED)
        assert e.value.verdict == why
    assert checker().check(token, world.cert, NEED).jti == t.jti

    h, p, s = token.split(".")
    header = json.loads(_unb64(h))
    claims = json.loads(_unb64(p))
    wrong_typ = f"{_b64(json.dumps({**header, 'typ': 'JWT'}))}.{p}.{s}"
    wider = f"{h}.{_b64(json.dumps({**claims, 'scope': 'read:customers/**'}))}.{s}"
    flipped = f"{h}.{p}.{s[:10]}{'A' if s[10] != 'A' else 'B'}{s[11:]}"
    for bad, why in [
        (wrong_typ, Verdict.MALFORMED),
        (wider, Verdict.BAD_SIGNATURE),
        (flipped, Verdict.BAD_SIGNATURE),
        (f"{h}.{p}.{s}=", Verdict.MALFORMED),
        ("not a token", Verdict.MALFORMED),
        ("", Verdict.MALFORMED),
    ]:
        assert verdict(world.verifier, bad, world.cert) == why, why


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def test_a_completed_task_refuses_its_tokens_within_a_second(world: World) -> None:
    task, t = world.token()
    assert verdict(world.verifier, t.access_token, world.cert) is None
    ended = world.orchestrator.complete(task)
    took = eventually(lambda: verdict(world.verifier, t.access_token, world.cert) is not None, within=1.0)
    with pytest.raises(Refused) as e:
        world.verifier.check(t.access_token, world.cert, NEED)
    assert (e.value.verdict, e.value.sequence, e.value.status) == (
        Verdict.REVOKED,
        ended.revocation_sequence,
        401,
    )
    assert took < 1.0
    assert world.verifier.cursor >= ended.revocation_sequence


def test_another_certificate_than_the_bound_one_is_refused_and_deviates_the_task(world: World) -> None:
    if "mayfly_misuse_endpoint" not in metadata(world.broker):
        pytest.skip("this broker's metadata has no mayfly_misuse_endpoint (branch deviate-misuse)")
    task, t = world.token()
    thief = der(world.broker, "sub-agent")
    assert verdict(world.verifier, t.access_token, thief) == Verdict.NOT_BOUND_TO_CLIENT
    eventually(lambda: world.orchestrator.get_task(task).state == "deviated", within=10.0, every=0.05)
    # The deviation revoked the task: the bound certificate is refused too, now.
    eventually(lambda: verdict(world.verifier, t.access_token, world.cert) == Verdict.REVOKED, within=2.0)


def test_a_verifier_fails_closed_before_its_first_sync(broker: Broker) -> None:
    with (
        Agent(broker.url, broker.svid("agent")) as agent,
        Orchestrator(broker.url, broker.svid("orchestrator")) as o,
    ):
        task = o.open_task(AGENT, WORKFLOW, "x", [Scope(AUD, "customers/eu/*", "read")])
        token = agent.mint(task.id, AUD, "customers/eu/42", "read").access_token
        with Verifier(broker.url, broker.svid("verifier"), AUD) as v:
            first = verdict(v, token, der(broker, "agent"))
            assert v.wait_synced(SYNC_SECONDS)
            assert first == Verdict.STALE or v.is_synced, "stale until the history is replayed"
            assert verdict(v, token, der(broker, "agent")) is None


def test_a_silent_broker_makes_every_check_stale_until_it_speaks_again(own_broker: Broker) -> None:
    w = World(own_broker, staleness=2.0, reconnect_max=0.5)
    try:
        _, t = w.token()
        assert verdict(w.verifier, t.access_token, w.cert) is None
        own_broker.pause()
        try:
            took = eventually(
                lambda: verdict(w.verifier, t.access_token, w.cert) == Verdict.STALE, within=4.0
            )
            assert took >= 1.0, "fresh while within the bound"
        finally:
            own_broker.resume()
        eventually(lambda: verdict(w.verifier, t.access_token, w.cert) is None, within=15.0, every=0.05)
    finally:
        w.close()


def test_an_unknown_kid_refreshes_the_keys_once_per_interval(own_broker: Broker) -> None:
    w = World(own_broker)
    try:
        before = w.verifier.keys
        own_broker.stop()
        own_broker.start()  # a new process signs with a new key; the JWKS has both
        _, t = w.token()
        assert verdict(w.verifier, t.access_token, w.cert) in (None, Verdict.STALE)
        eventually(
            lambda: verdict(w.verifier, t.access_token, w.cert) is None, within=SYNC_SECONDS, every=0.05
        )
        after = w.verifier.keys
        assert after is not before and set(before) < set(after)
        forged = _forged_kid(t.access_token)
        assert verdict(w.verifier, forged, w.cert) == Verdict.UNKNOWN_KEY
        assert w.verifier.keys is after, "no second refresh within the interval"
    finally:
        w.close()


def _forged_kid(token: str) -> str:
    h, p, s = token.split(".")
    header = json.loads(_unb64(h))
    return f"{_b64(json.dumps({**header, 'kid': 'no-such-key'}))}.{p}.{s}"


def test_revocations_are_forgotten_once_no_token_they_concern_can_be_alive(broker: Broker) -> None:
    ahead = [0.0]
    w = World(broker, clock=lambda: time.time() + ahead[0])
    try:
        task, t = w.token()
        w.orchestrator.complete(task)
        eventually(lambda: verdict(w.verifier, t.access_token, w.cert) == Verdict.REVOKED, within=2.0)
        assert w.verifier.revocation_count >= 1
        ahead[0] = 2 * DAY  # past the longest lifetime, leeway and skew
        eventually(lambda: w.verifier.revocation_count == 0, within=SYNC_SECONDS, every=0.05)
    finally:
        w.close()


@pytest.mark.anyio
async def test_an_async_verifier_resyncs_from_zero_when_the_broker_refuses_its_cursor(broker: Broker) -> None:
    async with AsyncVerifier(broker.url, broker.svid("verifier"), AUD) as v:
        assert v.cursor == 0
    v = AsyncVerifier(broker.url, broker.svid("verifier"), AUD)
    v.state.cursor = 10**9  # past the store's head: the broker answers 409
    await v.start()
    try:
        with anyio.fail_after(SYNC_SECONDS):
            await v.synced()
        assert v.is_synced and v.cursor < 10**9, "replayed from the start"
        with (
            Agent(broker.url, broker.svid("agent")) as agent,
            Orchestrator(broker.url, broker.svid("orchestrator")) as o,
        ):
            task = o.open_task(AGENT, WORKFLOW, "x", [Scope(AUD, "customers/eu/*", "read")])
            token = agent.mint(task.id, AUD, "customers/eu/42", "read").access_token
        claims = await v.check(token, der(broker, "agent"), NEED)
        assert claims.task == task.id
    finally:
        await v.aclose()
