"""A verifier's background work against the broker, all on one asyncio loop and
over one mTLS client with the verifier's SVID: following the revocation feed
(Server-Sent Events, read with httpx-sse), refreshing the JWKS (rate-limited,
single-flight) and reporting tokens presented by the wrong certificate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
from httpx_sse import aconnect_sse

from ._http import MAX_ANSWER_BYTES, AsyncConnection, Call
from ._revocations import FeedState, OutOfStep
from ._token import Claims, KeySet, keys_from_jwks
from .errors import MayflyError, ProtocolError, Unavailable

log = logging.getLogger("mayfly.verifier")

#: How often the revocation set is pruned, in seconds of the verifier's clock.
PRUNE_EVERY = 30
#: Most tokens remembered as reported; past it (a flood), reports wait until
#: remembered tokens expire.
MAX_REMEMBERED = 10_000
#: Most misuse reports in flight at once; past it, one is dropped (and sent
#: again the next time its token is presented).
MAX_IN_FLIGHT = 32


def _jitter(d: float) -> float:
    """Between half and all of ``d``: verifiers cut off together do not
    reconnect in lockstep."""
    return d / 2 + d / 2 * secrets.randbelow(1000) / 1000


async def fetch_jwks(conn: AsyncConnection, url: str, timeout: float) -> bytes:
    client = await conn.client()
    r = await asyncio.wait_for(client.get(url, timeout=timeout), timeout)
    if r.status_code != 200 or len(r.content) > MAX_ANSWER_BYTES:
        raise ProtocolError(f"the JWKS answer is HTTP {r.status_code}", r.status_code)
    return r.content


class KeyCache:
    """The broker's keys, replaced by each refresh that yields a key set. A
    refresh for an unknown kid runs at most once per ``min_interval``, and
    concurrent callers share it (the lock)."""

    def __init__(
        self, keys: KeySet, min_interval: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.keys = keys
        self._min_interval = min_interval
        self._monotonic = monotonic
        # The fetch at start does not count: a kid unknown right after it (a
        # replica that started meanwhile) may refresh at once.
        self._last: float | None = None
        self._lock = asyncio.Lock()

    async def refresh_for(self, kid: str, fetch: Callable[[], Awaitable[bytes]]) -> KeySet | None:
        """The keys to verify a token of ``kid`` with, if a refresh (allowed
        now, or one that ran while waiting) brought it."""
        async with self._lock:
            if kid in self.keys:
                return self.keys
            if self._last is not None and self._monotonic() - self._last < self._min_interval:
                return None
            await self._refresh(fetch)
            return self.keys if kid in self.keys else None

    async def refresh(self, fetch: Callable[[], Awaitable[bytes]]) -> None:
        """A scheduled refresh, so that retired keys leave the cache."""
        async with self._lock:
            await self._refresh(fetch)

    async def _refresh(self, fetch: Callable[[], Awaitable[bytes]]) -> None:
        self._last = self._monotonic()
        # On any failure the cached keys stay: they are still the broker's.
        try:
            self.keys = keys_from_jwks(await fetch())
        except Exception as e:  # the fetch's and the parse's failures alike
            log.warning("JWKS refresh failed (%s): keeping the cached keys", type(e).__name__)


class Follow:
    """Follows the feed until cancelled: each message applied once, in order,
    reconnecting with backoff from the cursor (or from 0 after a resync)."""

    def __init__(
        self,
        conn: AsyncConnection,
        url: str,
        state: FeedState,
        clock: Callable[[], float],
        staleness: float,
        backoff: tuple[float, float],
    ) -> None:
        self._conn, self._url, self._state, self._clock = conn, url, state, clock
        self._staleness = staleness
        self._backoff_min, self._backoff_max = backoff
        self._next_prune = 0
        self._progressed = False

    async def run(self) -> None:
        backoff = self._backoff_min
        while True:
            self._progressed = False
            try:
                await self._stream_once()
            except Exception as e:  # whatever broke it, never let the feed die: stale forever
                log.warning(
                    "revocation feed lost (%s); reconnecting after %d", type(e).__name__, self._state.cursor
                )
            # A feed that delivered something starts the backoff again.
            if self._progressed:
                backoff = self._backoff_min
            await asyncio.sleep(_jitter(backoff))
            backoff = min(backoff * 2, self._backoff_max)

    def _resync(self, why: str) -> None:
        log.warning(
            "revocation feed: the broker cannot serve cursor %d (%s); tokens are refused as stale "
            "until the history is replayed from 0",
            self._state.cursor,
            why,
        )
        self._state.resync()

    async def _stream_once(self) -> None:
        after = self._state.cursor
        params = {}
        if after:
            params["after"] = str(after)
            if self._state.cursor_at is not None:
                params["after_event_at"] = self._state.cursor_at
        client = await self._conn.client()
        # Opening, and each message, within the staleness bound: a feed silent
        # for longer may be half-open, and is reopened.
        timeout = httpx.Timeout(self._staleness)
        async with aconnect_sse(client, "GET", self._url, params=params, timeout=timeout) as source:
            r = source.response
            if r.status_code == 409:
                self._resync(await _why(r))
                return
            if r.status_code != 200:
                log.warning("revocation feed refused: HTTP %d (%s)", r.status_code, await _why(r))
                return
            log.info("revocation feed open after %d", after)
            async for sse in source.aiter_sse():
                now = int(self._clock() // 1)
                try:
                    self._state.handle(sse.event, sse.data, now)
                except OutOfStep as e:
                    if e.resync:
                        self._resync(str(e))
                    else:
                        log.warning("revocation feed out of step (%s); reopening from the cursor", e)
                    return
                self._progressed = True
                if now >= self._next_prune:
                    self._state.revocations.prune(now)
                    self._next_prune = now + PRUNE_EVERY
            log.info("revocation feed closed by the broker after %d", self._state.cursor)


async def _why(r: httpx.Response) -> str:
    """The ``error_description`` of a refusal, short (the broker's own text)."""
    body = b""
    async for chunk in r.aiter_bytes():
        body += chunk
        if len(body) > 4096:
            break
    try:
        doc = json.loads(body)
    except ValueError:
        return "no description"
    why = doc.get("error_description") if isinstance(doc, dict) else None
    return str(why)[:200] if why else "no description"


class Reporter:
    """Reports tokens presented with another client certificate: in the
    background, once per token, bounded, never blocking a check, never logging
    the token."""

    def __init__(self, conn: AsyncConnection, url: str | None, timeout: float) -> None:
        self._conn, self._url, self._timeout = conn, url, timeout
        self._seen: dict[str, int] = {}  # reported jti → its exp
        self._lock = threading.Lock()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _first(self, c: Claims, now: int) -> bool:
        with self._lock:
            if c.jti in self._seen:
                return False
            if len(self._seen) >= MAX_REMEMBERED:
                self._seen = {j: exp for j, exp in self._seen.items() if exp > now}
                if len(self._seen) >= MAX_REMEMBERED:
                    log.warning("too many misuse reports pending; token %s is not reported", c.jti)
                    return False
            self._seen[c.jti] = c.exp
            return True

    def _forget(self, jti: str) -> None:
        with self._lock:
            self._seen.pop(jti, None)

    def binding_mismatch(self, token: str, c: Claims, presented: str, now: int) -> None:
        """From any thread: report that ``token`` came with certificate ``presented``."""
        if self._url is None or self._loop is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "the broker has no misuse endpoint: tokens presented by another certificate are not reported"
                )
            return
        if not self._first(c, now):
            return
        evidence = (
            f"token {c.jti} bound to certificate x5t#S256 {c.x5t_s256} "
            f"was presented with certificate x5t#S256 {presented}"
        )
        report = {"token": token, "kind": "binding_mismatch", "evidence": evidence}
        try:
            self._loop.call_soon_threadsafe(self._spawn, self._url, report, c.jti)
        except RuntimeError:  # the loop is closed: the verifier is shutting down
            self._forget(c.jti)

    def _spawn(self, url: str, report: dict[str, str], jti: str) -> None:
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            log.warning("too many misuse reports in flight; token %s is reported next time", jti)
            self._forget(jti)
            return
        task = asyncio.get_running_loop().create_task(self._send(url, report, jti))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, url: str, report: dict[str, str], jti: str) -> None:
        # The report holds the token: it goes into the request, never a log.
        try:
            body = await asyncio.wait_for(self._conn.call(Call("POST", url, json=report)), self._timeout)
            task = body.get("task_id") if isinstance(body, dict) else None
            seq = body.get("revocation_sequence") if isinstance(body, dict) else None
            log.warning(
                "misuse reported: token %s presented with another certificate (task %s, event %s)",
                jti,
                task,
                seq,
            )
            return
        except Unavailable as e:
            log.error("misuse report of token %s failed: %s", jti, e.error)
        except MayflyError as e:
            log.error("misuse report of token %s refused: %s", jti, e.error)
            # A refusal stands; only a broker that could not answer is asked again.
            if e.status is not None and e.status < 500:
                return
        except (asyncio.TimeoutError, httpx.HTTPError, OSError) as e:
            log.error("misuse report of token %s failed: %s", jti, type(e).__name__)
        # Not on record: the next presentation of the token reports again.
        self._forget(jti)

    async def aclose(self) -> None:
        for t in list(self._in_flight):
            t.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
