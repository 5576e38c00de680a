"""One HTTP client per caller over mTLS, rebuilt when its SVID rotates, and the
broker's answers turned into values or :mod:`mayfly.errors`.

The sync and async clients share everything but the transport: requests are
described by :class:`Call` and answers read by :func:`parse`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .credentials import Credentials
from .errors import MayflyError, ProtocolError, Unavailable, from_answer

#: The RFC 8414 well-known suffix.
WELL_KNOWN = "/.well-known/oauth-authorization-server"
#: Connect, read, write and pool timeouts for calls to the broker (seconds).
DEFAULT_TIMEOUT = 10.0
#: The largest answer read from the broker.
MAX_ANSWER_BYTES = 1 << 20


def metadata_url(issuer: str) -> str:
    """Where an issuer's RFC 8414 metadata is: the well-known segment goes
    between the host and the issuer's path (§3.1)."""
    u = urlsplit(issuer)
    if u.scheme != "https" or not u.netloc:
        raise ValueError(f"the broker URL must be https://host[:port][/path], not {issuer[:60]!r}")
    path = u.path.rstrip("/")
    return urlunsplit((u.scheme, u.netloc, WELL_KNOWN + path, "", ""))


@dataclass(frozen=True)
class Endpoints:
    """The broker's endpoints, from its metadata."""

    issuer: str
    token: str
    introspect: str
    revoke: str
    jwks: str
    feed: str
    tasks: str
    misuse: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_metadata(doc: Any, issuer: str) -> Endpoints:
        if not isinstance(doc, dict):
            raise ProtocolError("the broker's metadata is not a JSON object")
        if doc.get("issuer") != issuer:
            raise ProtocolError(
                f"the metadata's issuer {str(doc.get('issuer'))[:60]!r} is not {issuer[:60]!r} (RFC 8414 §3.3)"
            )

        def url(name: str) -> str:
            v = doc.get(name)
            if not isinstance(v, str) or not v.startswith("https://"):
                raise ProtocolError(f"the broker's metadata has no https {name}")
            return v

        tasks = url("mayfly_tasks_endpoint")
        misuse = doc.get("mayfly_misuse_endpoint")
        return Endpoints(
            issuer=issuer,
            token=url("token_endpoint"),
            introspect=url("introspection_endpoint"),
            revoke=url("revocation_endpoint"),
            jwks=url("jwks_uri"),
            feed=url("mayfly_revocation_feed_endpoint"),
            tasks=tasks,
            misuse=misuse if isinstance(misuse, str) and misuse.startswith("https://") else None,
            raw=doc,
        )


@dataclass(frozen=True)
class Call:
    """One request to the broker."""

    method: str
    url: str
    # Forms and bodies carry tokens (subject tokens, misuse reports): never shown.
    form: dict[str, str] | None = field(default=None, repr=False)
    json: Any = field(default=None, repr=False)


def parse(response: httpx.Response) -> Any:
    """The JSON of a success, or the error the broker answered, raised."""
    if len(response.content) > MAX_ANSWER_BYTES:
        raise ProtocolError(f"the answer is over {MAX_ANSWER_BYTES} bytes", response.status_code)
    body: Any = None
    if response.content:
        try:
            body = json.loads(response.content, parse_constant=_no_constant)
        except ValueError:
            body = None
    if response.is_success:
        if body is None:
            raise ProtocolError("the answer is not JSON", response.status_code)
        return body
    raise from_answer(response.status_code, body, response.headers.get("retry-after"))


def _no_constant(name: str) -> Any:
    """JSON has no ``Infinity`` or ``NaN``: a bound read from the broker must be a number."""
    raise ValueError(f"{name} is not JSON")


def _unreachable(e: httpx.HTTPError) -> MayflyError:
    return Unavailable("temporarily_unavailable", f"the broker cannot be reached: {type(e).__name__}: {e}")


class SyncConnection:
    """An httpx.Client for one caller, replaced when its SVID rotates."""

    def __init__(self, issuer: str, credentials: Credentials, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.issuer = issuer.rstrip("/")
        self._metadata_url = metadata_url(self.issuer)
        self._credentials = credentials
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._generation = -1
        self._endpoints: Endpoints | None = None

    def client(self) -> httpx.Client:
        ctx, generation = self._credentials.current()
        with self._lock:
            if self._client is None or generation != self._generation:
                old, self._client = self._client, httpx.Client(verify=ctx, timeout=self._timeout)
                self._generation = generation
                if old is not None:
                    old.close()
            return self._client

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = Endpoints.from_metadata(self.call(Call("GET", self._metadata_url)), self.issuer)
        return self._endpoints

    def call(self, call: Call) -> Any:
        try:
            r = self.client().request(call.method, call.url, data=call.form, json=call.json)
        except httpx.HTTPError as e:
            raise _unreachable(e) from e
        return parse(r)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class AsyncConnection:
    """An httpx.AsyncClient for one caller, replaced when its SVID rotates."""

    def __init__(self, issuer: str, credentials: Credentials, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.issuer = issuer.rstrip("/")
        self._metadata_url = metadata_url(self.issuer)
        self._credentials = credentials
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._generation = -1
        self._endpoints: Endpoints | None = None

    async def client(self) -> httpx.AsyncClient:
        ctx, generation = self._credentials.current()
        async with self._lock:
            if self._client is None or generation != self._generation:
                old, self._client = self._client, httpx.AsyncClient(verify=ctx, timeout=self._timeout)
                self._generation = generation
                if old is not None:
                    await old.aclose()
            return self._client

    async def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = Endpoints.from_metadata(
                await self.call(Call("GET", self._metadata_url)), self.issuer
            )
        return self._endpoints

    async def call(self, call: Call) -> Any:
        try:
            client = await self.client()
            r = await client.request(call.method, call.url, data=call.form, json=call.json)
        except httpx.HTTPError as e:
            raise _unreachable(e) from e
        return parse(r)

    async def aclose(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.aclose()
                self._client = None
