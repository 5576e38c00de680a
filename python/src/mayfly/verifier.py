"""A resource server's check of Mayfly tokens, equal to the Rust verifier
(``src/verifier``) in what it accepts and refuses: signature against the
broker's JWKS (EdDSA only), ``iss``, ``aud``, ``exp``/``nbf`` with leeway, the
lifetime bound, the certificate binding (RFC 8705 ``cnf.x5t#S256``), a live
revocation set fed by the broker's revocation feed, and the required scope.

It **fails closed**: until the feed has replayed the revocation history (the
first heartbeat), while it resyncs, and whenever the broker has been silent
past the staleness bound, every check is refused as ``stale`` (503).

:class:`AsyncVerifier` follows the feed in an asyncio task of the caller's
loop; :class:`Verifier` is its synchronous twin, with the same work on a
private loop in a daemon thread. Both check locally, without a network call
except a rate-limited, shared JWKS refresh for an unknown ``kid``. A token
presented with another certificate is reported to the broker in the
background, which deviates its task. :class:`Checker` is the check alone, fed
by hand: for tests, benchmarks and unusual feeds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._check import DEFAULT_STALENESS, Checker, Refused, VerifierConfig, require, thumbprint
from ._feed import Follow, KeyCache, Reporter, fetch_jwks
from ._http import AsyncConnection
from ._revocations import FeedState, RevocationSet
from ._scope import RequiredScope, RequiredScopeError
from ._token import Claims, Compact, KeySet, Verdict, keys_from_jwks
from .credentials import Credentials
from .errors import ProtocolError

T = TypeVar("T")
#: Staleness bound in heartbeats of the broker's feed, when not configured.
HEARTBEATS = 3
#: The longest staleness bound taken from the broker's heartbeat (seconds).
MAX_STALENESS = 300.0


class AsyncVerifier:
    """Checks tokens for ``audience`` issued by the broker at ``broker`` (its
    issuer URL), following its revocations with ``credentials`` (an SVID with
    the ``verifier`` role). ``await start()`` (or ``async with``) first."""

    def __init__(
        self, broker: str, credentials: Credentials, audience: str, *, config: VerifierConfig | None = None
    ) -> None:
        self.config = config or VerifierConfig()
        self.audience = audience
        self._conn = AsyncConnection(broker, credentials, self.config.request_timeout)
        cfg = self.config
        self.state = FeedState(
            RevocationSet(int(cfg.max_token_lifetime), int(cfg.leeway), int(cfg.clock_skew))
        )
        self._keys = KeyCache({}, cfg.key_refresh_min_interval)
        self._checker: Checker | None = None
        self._reporter: Reporter | None = None
        self._jwks_url = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = asyncio.Event()

    async def __aenter__(self) -> AsyncVerifier:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Fetches the broker's metadata and keys and starts following its
        revocations from the beginning. Raises when either cannot be fetched;
        the feed connects (and reconnects) in the background."""
        if self._checker is not None:
            return
        cfg, e = self.config, await self._conn.endpoints()
        self._jwks_url = e.jwks
        try:
            self._keys.keys = keys_from_jwks(await self._fetch())
        except ValueError as err:
            raise ProtocolError(f"the broker's JWKS is not a key set: {err}") from err
        heartbeat = e.raw.get("mayfly_revocation_feed_heartbeat_seconds")
        staleness = cfg.staleness
        if staleness is None:
            staleness = DEFAULT_STALENESS
            if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool) and heartbeat > 0:
                # Bounded: a feed silent for longer than that is lost, whatever it says.
                staleness = min(HEARTBEATS * float(heartbeat), MAX_STALENESS)
        loop = asyncio.get_running_loop()
        self._reporter = Reporter(self._conn, e.misuse if cfg.report_misuse else None, cfg.request_timeout)
        self._reporter.start(loop)
        self._checker = Checker(
            self._conn.issuer,
            self.audience,
            self._keys,
            config=cfg,
            staleness=staleness,
            state=self.state,
            report=self._reporter.binding_mismatch,
        )
        self.state.on_change = lambda synced: self._synced.set() if synced else self._synced.clear()
        follow = Follow(
            self._conn, e.feed, self.state, cfg.clock, staleness, (cfg.reconnect_min, cfg.reconnect_max)
        )
        self._tasks = [loop.create_task(follow.run()), loop.create_task(self._refresh_keys())]

    async def aclose(self) -> None:
        # Closed, it hears no more revocations: it refuses from now on.
        self._checker = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._reporter is not None:
            await self._reporter.aclose()
        await self._conn.aclose()

    async def _fetch(self) -> bytes:
        return await fetch_jwks(self._conn, self._jwks_url, self.config.request_timeout)

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.config.key_refresh_every)
            await self._keys.refresh(self._fetch)

    def _begin(self, token: str) -> tuple[Checker, Compact, KeySet | None]:
        if self._checker is None:
            raise Refused(Verdict.STALE)  # not started (or never could): fail closed
        jws = self._checker.begin(token)
        keys = self._keys.keys
        return self._checker, jws, keys if jws.kid in keys else None

    async def _refresh_for(self, kid: str) -> KeySet | None:
        return await self._keys.refresh_for(kid, self._fetch)

    async def check(self, token: str, client_cert_der: bytes, required: RequiredScope | None) -> Claims:
        """The token's claims when it is valid for ``required`` presented with
        the client certificate ``client_cert_der`` (the DER of the leaf of the
        TLS session it came on); raises :class:`Refused` otherwise. ``None``
        for ``required`` accepts any valid token for this audience."""
        checker, jws, keys = self._begin(token)
        if keys is None:
            keys = await self._refresh_for(jws.kid)
            if keys is None:
                raise Refused(Verdict.UNKNOWN_KEY)
        return checker.finish(token, jws, keys, client_cert_der, required)

    @property
    def staleness(self) -> float:
        return self._checker.staleness if self._checker is not None else math.inf

    @property
    def keys(self) -> KeySet:
        """The broker's keys as last fetched (a new mapping after each refresh)."""
        return self._keys.keys

    @property
    def cursor(self) -> int:
        """The sequence of the last revocation applied since the last (re)sync."""
        return self.state.cursor

    @property
    def is_synced(self) -> bool:
        return self.state.synced

    @property
    def revocation_count(self) -> int:
        return len(self.state.revocations)

    async def synced(self) -> None:
        """Resolves once the revocation history is replayed (a heartbeat since
        the start or the last resync)."""
        await self._synced.wait()


class Verifier:
    """:class:`AsyncVerifier`'s synchronous twin: the feed, the key refreshes
    and misuse reports run on a private event loop in a daemon thread;
    :meth:`check` is a plain call. Starts at once; :meth:`close` stops it."""

    def __init__(
        self,
        broker: str,
        credentials: Credentials,
        audience: str,
        *,
        config: VerifierConfig | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mayfly-verifier", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncVerifier:
            return AsyncVerifier(broker, credentials, audience, config=config)

        self._async = self._run(make(), start_timeout)
        try:
            self._run(self._async.start(), start_timeout)
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self, "_async"):
                self._run(self._async.aclose(), 10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            if not self._thread.is_alive():
                self._loop.close()

    def check(self, token: str, client_cert_der: bytes, required: RequiredScope | None) -> Claims:
        """As :meth:`AsyncVerifier.check`; an unknown kid waits (at most the
        request timeout) for the shared JWKS refresh."""
        checker, jws, keys = self._async._begin(token)
        if keys is None:
            try:
                keys = self._run(self._async._refresh_for(jws.kid), self._async.config.request_timeout + 1)
            except (concurrent.futures.TimeoutError, RuntimeError):
                keys = None
            if keys is None:
                raise Refused(Verdict.UNKNOWN_KEY)
        return checker.finish(token, jws, keys, client_cert_der, required)

    @property
    def staleness(self) -> float:
        return self._async.staleness

    @property
    def keys(self) -> KeySet:
        return self._async.keys

    @property
    def cursor(self) -> int:
        return self._async.cursor

    @property
    def is_synced(self) -> bool:
        return self._async.is_synced

    @property
    def revocation_count(self) -> int:
        return self._async.revocation_count

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Waits until the revocation history is replayed; False on timeout."""
        return self._async.state.wait_synced(timeout)


__all__ = [
    "AsyncVerifier",
    "Checker",
    "Claims",
    "Refused",
    "RequiredScope",
    "RequiredScopeError",
    "Verdict",
    "Verifier",
    "VerifierConfig",
    "keys_from_jwks",
    "require",
    "thumbprint",
]
