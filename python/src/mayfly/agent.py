"""The agent's side: mint task-scoped tokens, keep them in a per-scope cache,
wait for step-up approvals, delegate to sub-agents and redeem delegations.

Every call is a request to the broker's OAuth front door over mTLS with the
agent's SVID; the broker decides, this only asks and keeps what it hands out.
:class:`Agent` is synchronous (httpx.Client), :class:`AsyncAgent` its asyncio
twin (httpx.AsyncClient); both take the same arguments.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from ._http import AsyncConnection, Call, Endpoints, SyncConnection
from .credentials import Credentials
from .errors import ApprovalPending, InvalidGrant, ProtocolError, SlowDown

CLIENT_CREDENTIALS = "client_credentials"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a grant type)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a token type)
OFFER_TYPE = "urn:mayfly:params:oauth:token-type:delegation-offer"
#: RFC 8628 §3.5: each ``slow_down`` adds five seconds to the interval.
SLOW_DOWN_STEP = 5.0


@dataclass(frozen=True)
class Scope:
    """One ``(audience, resource, action)``: the tool, a resource (pattern)
    inside it, one action."""

    audience: str
    resource: str
    action: str

    @property
    def claim(self) -> str:
        """As the token's ``scope`` claim spells it: ``<action>:<resource>``."""
        return f"{self.action}:{self.resource}"

    def as_json(self) -> dict[str, str]:
        return {"audience": self.audience, "resource": self.resource, "action": self.action}


@dataclass(frozen=True)
class Token:
    """An access token the broker issued (its value is never in ``repr``)."""

    access_token: str = field(repr=False)
    expires_at: float
    scope: str
    audience: str
    task_id: str
    jti: str

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (RFC 6750 ``Bearer``; the token is
        bound to the certificate it was minted over, RFC 8705 §3)."""
        return f"Bearer {self.access_token}"


@dataclass(frozen=True)
class Offer:
    """A delegation offer to a sub-agent, to hand it out of band."""

    offer: str = field(repr=False)
    expires_at: float
    depth: int
    sub_agent: str


def _token_from(body: Any, asked_at: float) -> Token:
    if not isinstance(body, dict):
        raise ProtocolError("the token answer is not a JSON object")
    access, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(access, str) or not isinstance(expires_in, (int, float)):
        raise ProtocolError("the token answer has no access_token or expires_in")
    try:
        # The broker's own answer over TLS: read for its names, not trusted
        # for anything a verifier decides.
        claims = jwt.decode(access, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise ProtocolError(f"the access token is not a JWT: {e}") from e
    aud = claims.get("aud")
    return Token(
        access_token=access,
        # From before the request was sent: the cache renews early, never late.
        expires_at=asked_at + float(expires_in),
        scope=str(body.get("scope", claims.get("scope", ""))),
        audience=aud if isinstance(aud, str) else str(aud),
        task_id=str(claims.get("task", "")),
        jti=str(claims.get("jti", "")),
    )


def _offer_from(body: Any, asked_at: float, sub_agent: str) -> Offer:
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise ProtocolError("the exchange answer has no access_token")
    return Offer(
        offer=body["access_token"],
        expires_at=asked_at + float(body.get("expires_in", 0)),
        depth=int(body.get("depth", 0)),
        sub_agent=sub_agent,
    )


def _mint_call(e: Endpoints, task_id: str, audience: str, resource: str, action: str, ttl: int) -> Call:
    return Call(
        "POST",
        e.token,
        form={
            "grant_type": CLIENT_CREDENTIALS,
            "task_id": task_id,
            "audience": audience,
            "scope": f"{action}:{resource}",
            "ttl_seconds": str(int(ttl)),
        },
    )


def _poll_call(e: Endpoints, approval: str) -> Call:
    return Call("POST", e.token, form={"grant_type": DEVICE_CODE, "device_code": approval})


def _offer_call(e: Endpoints, token: Token | str, to: str, scope: Scope, ttl: int) -> Call:
    subject = token.access_token if isinstance(token, Token) else token
    return Call(
        "POST",
        e.token,
        form={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": OFFER_TYPE,
            "sub_agent": to,
            "audience": scope.audience,
            "scope": scope.claim,
            "ttl_seconds": str(int(ttl)),
        },
    )


def _redeem_call(e: Endpoints, offer: Offer | str) -> Call:
    value = offer.offer if isinstance(offer, Offer) else offer
    return Call(
        "POST",
        e.token,
        form={"grant_type": TOKEN_EXCHANGE, "subject_token": value, "subject_token_type": OFFER_TYPE},
    )


def _give_back_call(e: Endpoints, token: Token | str) -> Call:
    value = token.access_token if isinstance(token, Token) else token
    return Call("POST", e.revoke, form={"token": value, "token_type_hint": "access_token"})


_Key = tuple[str, str, str, str]


class TokenCache:
    """Tokens by ``(task, audience, resource, action)``, renewed before they
    expire: a token is handed out only while more than ``renew_before`` of its
    life (a fraction) and at least ``min_remaining`` seconds are left, and only
    to the SVID it was minted with (its ``generation``): after a rotation a
    token bound to the old certificate would be refused by every tool, and
    reported as misuse. A token never outlives its task's deadline (the broker
    caps it); a task the broker says is over (``invalid_grant``) is forgotten at
    once, and :meth:`forget` forgets one by hand (say, when its orchestrator
    completes it).
    """

    def __init__(
        self, renew_before: float = 0.2, min_remaining: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._renew_before = renew_before
        self._min_remaining = min_remaining
        self._clock = clock
        self._tokens: dict[_Key, tuple[Token, float, int]] = {}
        self._lock = threading.Lock()

    def get(self, key: _Key, generation: int = 0) -> Token | None:
        now = self._clock()
        with self._lock:
            held = self._tokens.get(key)
            if held is None:
                return None
            token, lifetime, minted_with = held
            fresh = token.expires_at - now > max(self._min_remaining, self._renew_before * lifetime)
            if fresh and minted_with == generation:
                return token
            del self._tokens[key]
            return None

    def put(self, key: _Key, token: Token, asked_at: float, generation: int = 0) -> None:
        with self._lock:
            self._tokens[key] = (token, token.expires_at - asked_at, generation)

    def forget(self, task_id: str) -> None:
        with self._lock:
            for k in [k for k in self._tokens if k[0] == task_id]:
                del self._tokens[k]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


class Agent:
    """An agent's calls to the broker (synchronous).

    ``broker`` is the issuer URL (``https://127.0.0.1:8443`` for ``mayfly
    dev``); ``credentials`` the agent's SVID (:class:`~mayfly.SvidFiles`,
    :class:`~mayfly.WorkloadApi`).
    """

    def __init__(
        self,
        broker: str,
        credentials: Credentials,
        *,
        cache: TokenCache | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = SyncConnection(broker, credentials, timeout)
        self._credentials = credentials
        self.cache = cache if cache is not None else TokenCache(clock=clock)
        self._clock = clock

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def mint(self, task: str, audience: str, resource: str, action: str, ttl: int = 300) -> Token:
        """A new token for one scope of one task (never from the cache).

        Raises :class:`~mayfly.errors.ApprovalPending` for a step-up action
        (wait with :meth:`wait_for_approval`), :class:`~mayfly.errors.InvalidScope`
        for a scope outside the task (the broker deviates the task), and the
        other :mod:`mayfly.errors` for what else the broker refuses.
        """
        asked_at = self._clock()
        try:
            body = self._conn.call(_mint_call(self._conn.endpoints(), task, audience, resource, action, ttl))
        except InvalidGrant:
            self.cache.forget(task)
            raise
        return _token_from(body, asked_at)

    def token(self, task: str, audience: str, resource: str, action: str, ttl: int = 300) -> Token:
        """The cached token for this scope, or a new one when it is close to expiry."""
        key = (task, audience, resource, action)
        generation = self._credentials.current()[1]
        held = self.cache.get(key, generation)
        if held is not None:
            return held
        asked_at = self._clock()
        token = self.mint(task, audience, resource, action, ttl)
        self.cache.put(key, token, asked_at, generation)
        return token

    def wait_for_approval(self, pending: ApprovalPending | str, timeout: float = 300.0) -> Token:
        """Poll a step-up approval (RFC 8628) until it is decided: the approved
        token, or :class:`~mayfly.errors.AccessDenied` (denied),
        :class:`~mayfly.errors.ExpiredToken` (lapsed), :class:`TimeoutError`."""
        approval, interval = _pending(pending)
        deadline = time.monotonic() + timeout
        while True:
            wait = min(interval, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"approval {approval[:40]} undecided after {timeout:g}s")
            time.sleep(wait)
            asked_at = self._clock()
            try:
                return _token_from(self._conn.call(_poll_call(self._conn.endpoints(), approval)), asked_at)
            except ApprovalPending:
                continue
            except SlowDown:
                interval += SLOW_DOWN_STEP

    def offer(self, token: Token | str, to: str, scope: Scope, ttl: int = 300) -> Offer:
        """Offer sub-agent ``to`` (a SPIFFE ID) a token no wider than ``token``."""
        asked_at = self._clock()
        body = self._conn.call(_offer_call(self._conn.endpoints(), token, to, scope, ttl))
        return _offer_from(body, asked_at, to)

    def redeem(self, offer: Offer | str) -> Token:
        """Redeem an offer made to this agent: a token bound to its certificate."""
        asked_at = self._clock()
        return _token_from(self._conn.call(_redeem_call(self._conn.endpoints(), offer)), asked_at)

    def give_back(self, token: Token | str) -> None:
        """Revoke a token this agent holds and no longer needs (RFC 7009)."""
        self._conn.call(_give_back_call(self._conn.endpoints(), token))


class AsyncAgent:
    """:class:`Agent`'s asyncio twin."""

    def __init__(
        self,
        broker: str,
        credentials: Credentials,
        *,
        cache: TokenCache | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = AsyncConnection(broker, credentials, timeout)
        self._credentials = credentials
        self.cache = cache if cache is not None else TokenCache(clock=clock)
        self._clock = clock
        self._minting: dict[_Key, asyncio.Lock] = {}

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def mint(self, task: str, audience: str, resource: str, action: str, ttl: int = 300) -> Token:
        asked_at = self._clock()
        try:
            call = _mint_call(await self._conn.endpoints(), task, audience, resource, action, ttl)
            body = await self._conn.call(call)
        except InvalidGrant:
            self.cache.forget(task)
            raise
        return _token_from(body, asked_at)

    async def token(self, task: str, audience: str, resource: str, action: str, ttl: int = 300) -> Token:
        key = (task, audience, resource, action)
        generation = self._credentials.current()[1]
        held = self.cache.get(key, generation)
        if held is not None:
            return held
        # One mint per scope at a time: concurrent callers share its token.
        lock = self._minting.setdefault(key, asyncio.Lock())
        async with lock:
            held = self.cache.get(key, generation)
            if held is not None:
                return held
            asked_at = self._clock()
            token = await self.mint(task, audience, resource, action, ttl)
            self.cache.put(key, token, asked_at, generation)
            return token

    async def wait_for_approval(self, pending: ApprovalPending | str, timeout: float = 300.0) -> Token:
        approval, interval = _pending(pending)
        deadline = time.monotonic() + timeout
        while True:
            wait = min(interval, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"approval {approval[:40]} undecided after {timeout:g}s")
            await asyncio.sleep(wait)
            asked_at = self._clock()
            try:
                call = _poll_call(await self._conn.endpoints(), approval)
                return _token_from(await self._conn.call(call), asked_at)
            except ApprovalPending:
                continue
            except SlowDown:
                interval += SLOW_DOWN_STEP

    async def offer(self, token: Token | str, to: str, scope: Scope, ttl: int = 300) -> Offer:
        asked_at = self._clock()
        body = await self._conn.call(_offer_call(await self._conn.endpoints(), token, to, scope, ttl))
        return _offer_from(body, asked_at, to)

    async def redeem(self, offer: Offer | str) -> Token:
        asked_at = self._clock()
        return _token_from(await self._conn.call(_redeem_call(await self._conn.endpoints(), offer)), asked_at)

    async def give_back(self, token: Token | str) -> None:
        await self._conn.call(_give_back_call(await self._conn.endpoints(), token))


def _pending(pending: ApprovalPending | str) -> tuple[str, float]:
    if isinstance(pending, ApprovalPending):
        return pending.approval, max(pending.interval, 1.0)
    return pending, 5.0


__all__ = ["Agent", "AsyncAgent", "Offer", "Scope", "Token", "TokenCache"]
