"""Pure-ASGI middleware that protects an app (Starlette, FastAPI, the MCP SDK's
streamable-HTTP app) with Mayfly tokens, as the MCP authorization spec asks of
an MCP server: RFC 9728 metadata at its well-known path, ``401`` with a
``resource_metadata`` challenge, ``403 insufficient_scope`` naming the scope
needed, ``503`` when the revocation feed is stale.

The client certificate comes from the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"][0]``, PEM); a request
without one is refused, since every token is bound to one. uvicorn does not
fill that extension: serve with :mod:`mayfly.uvicorn`. The verified claims are
``scope["state"]["mayfly"]`` (``request.state.mayfly`` in Starlette).

The token is checked before the body is read (unauthenticated requests cost
no body); the body, bounded, is then read for the required scope and replayed
to the app.
"""

from __future__ import annotations

import logging
import ssl
import string
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ._scope import RequiredScopeError
from ._token import strict_json
from .resource import CONTENT_TYPE, Answer, BearerError, ProtectedResource, bearer_token
from .verifier import AsyncVerifier, Claims, Refused, RequiredScope, require

log = logging.getLogger("mayfly.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The largest request body read to find the required scope.
MAX_BODY = 1 << 20


class Reject(Exception):
    """Raised by a required-scope callable to refuse a request it cannot map
    (a malformed call, an argument that is not one plain segment)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


#: What a request needs, from its scope and body: a scope, or None for "any
#: valid token for this audience"; may raise :class:`Reject`.
RequiredFor = Callable[[Scope, "bytes | None"], "RequiredScope | None"]


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def client_cert_der(scope: Scope) -> bytes | None:
    """The DER of the client certificate of the request's TLS session, from
    the ASGI TLS extension; None when there is none (or it is unreadable)."""
    ext = scope.get("extensions")
    tls = ext.get("tls") if isinstance(ext, Mapping) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not isinstance(chain, (list, tuple)) or not chain or not isinstance(chain[0], str):
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(chain[0])
    except ValueError:
        return None


class MayflyAuth:
    """Checks every HTTP request's bearer token with ``verifier`` (started)
    for the scope ``required(scope, body)`` says, answering refusals itself.
    WebSocket connections are refused; lifespan passes through."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: AsyncVerifier,
        resource: ProtectedResource,
        required: RequiredFor,
        *,
        max_body: int = MAX_BODY,
        read_body: bool = True,
    ) -> None:
        if not read_body and isinstance(required, McpToolScopes):
            # The tool a call names is in its body: unread, no call could be checked.
            raise ValueError("McpToolScopes needs the body: read_body must be True")
        self.app, self.verifier, self.resource, self.required = app, verifier, resource, required
        #: ``read_body=False``: ``required`` gets ``None`` and the app the body
        #: as it streams in (uploads larger than ``max_body``).
        self.max_body, self.read_body = max_body, read_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self.app(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise RuntimeError(f"unknown ASGI scope type {str(kind)[:20]!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == self.resource.well_known_path:
            if scope.get("method") in ("GET", "HEAD"):
                await _respond(send, self.resource.answer_metadata(), head=scope.get("method") == "HEAD")
            else:
                await _respond(
                    send, self.resource.answer(405, "invalid_request", "the metadata is read with GET")
                )
            return
        try:
            outcome = await self._authorize(scope, receive)
        except _Disconnected:
            return
        if isinstance(outcome, Answer):
            await _respond(send, outcome)
            return
        claims, body = outcome
        state = scope.get("state")
        inner = dict(scope)
        inner["state"] = {**(state if isinstance(state, Mapping) else {}), "mayfly": claims}
        await self.app(inner, _replay(body, receive) if body is not None else receive, send)

    async def _authorize(self, scope: Scope, receive: Receive) -> Answer | tuple[Claims, bytes | None]:
        headers = scope.get("headers") or []
        token = bearer_token([v for k, v in headers if k == b"authorization"])
        if isinstance(token, BearerError):
            return self.resource.answer_bearer_error(token)
        der = client_cert_der(scope)
        if der is None:
            # Fail closed: every Mayfly token is bound to a certificate.
            return self.resource.answer(
                401, "invalid_token", "a client certificate is required with this token"
            )
        try:
            claims = await self.verifier.check(token, der, None)
        except Refused as r:
            log.debug("refused: %s", r.verdict.value)
            return self.resource.answer_refused(r)
        try:
            body = await _read_body(headers, receive, self.max_body) if self.read_body else None
        except _TooLarge:
            return self.resource.answer(
                413, "invalid_request", f"the request body is over {self.max_body} bytes"
            )
        try:
            needed = self.required(scope, body)
            if needed is not None:
                require(claims, needed)
        except Refused as r:
            log.debug("refused: %s", r.verdict.value)
            return self.resource.answer_refused(r)
        except Reject as r:
            return self.resource.answer(r.status, r.error, r.description)
        except Exception as e:  # the app's callable: fail closed, say nothing of it
            log.error("the required-scope callable failed: %s", type(e).__name__)
            return self.resource.answer(500, "server_error", "the required scope could not be determined")
        return claims, body


async def _read_body(headers: list[tuple[bytes, bytes]], receive: Receive, limit: int) -> bytes:
    declared = [v for k, v in headers if k == b"content-length"]
    if declared and declared[0].isdigit() and int(declared[0]) > limit:
        raise _TooLarge
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            raise _Disconnected
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read, once, then the connection's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _respond(send: Send, a: Answer, *, head: bool = False) -> None:
    body = a.body.encode()
    headers = [
        (b"content-type", CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if a.www_authenticate is not None:
        headers.append((b"www-authenticate", a.www_authenticate.encode("ascii")))
    await send({"type": "http.response.start", "status": a.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _plain_segment(v: object) -> str | None:
    """An argument as one plain path segment, or None: strings and integers
    only, never empty, ``.``/``..``, ``/``, ``*`` or whitespace."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        return None
    s = str(v)
    if not s or s in (".", "..") or "/" in s or "*" in s or any(c.isspace() for c in s):
        return None
    return s


#: MCP methods that need only a valid token for this audience: the session's
#: own (handshake, discovery, ping) and the listings.
OPEN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "prompts/list",
    }
)


class McpToolScopes:
    """The required scope of an MCP request: a ``tools/call`` needs its tool's
    scope from ``tools`` (tool name → ``"<action>:<resource template>"``, e.g.
    ``{"get_customer": "read:customers/eu/{customer_id}"}``, each placeholder
    an argument that must be one plain segment); a tool not in the table is
    refused (403), and so is every other method that reads or changes data
    (``resources/read``, ``prompts/get``, …): only :data:`OPEN_METHODS` and
    notifications need no more than a valid token for this audience."""

    def __init__(self, tools: Mapping[str, str]) -> None:
        self._tools: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        for name, spec in tools.items():
            action, sep, template = spec.partition(":")
            parsed = [
                (f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None
            ]
            fields = tuple(f for f, _, _ in parsed)
            if not sep or any(not f.isidentifier() or spec or conv for f, spec, conv in parsed):
                raise ValueError(
                    f"tool {name[:40]!r}: the scope must be <action>:<resource>, {{name}} per argument"
                )
            RequiredScope(action, template.format_map({f: "x" for f in fields}))  # raises if it never can be
            self._tools[name] = (action, template, fields)

    @property
    def scopes_supported(self) -> tuple[str, ...]:
        """The tools' scopes as patterns (each placeholder ``*``), for the metadata."""
        return tuple(f"{a}:{t.format_map({f: '*' for f in fields})}" for a, t, fields in self._tools.values())

    def __call__(self, scope: Scope, body: bytes | None) -> RequiredScope | None:
        if body is None:
            raise Reject(500, "server_error", "the request body was not read, so no tool call can be checked")
        if not body.strip():
            if scope.get("method") in ("GET", "DELETE"):
                return None  # the server's stream, the end of a session
            raise Reject(400, "invalid_request", "the body is not one JSON-RPC message")
        try:
            msg = strict_json(body)
        except ValueError:
            raise Reject(400, "invalid_request", "the body is not one JSON-RPC message") from None
        if not isinstance(msg, dict):
            raise Reject(400, "invalid_request", "the body is not one JSON-RPC message")
        method = msg.get("method")
        if method != "tools/call":
            # Deny by default: what reads or changes data has a scope of its own
            # (resources/read, prompts/get, …); only the session's own messages
            # and the listings need no more than a token for this audience.
            if isinstance(method, str) and (method in OPEN_METHODS or method.startswith("notifications/")):
                return None
            if method is None and ("result" in msg or "error" in msg):
                return None  # a reply to the server's own request
            raise Reject(403, "insufficient_scope", f"no scope is configured for {str(method)[:40]!r}")
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        args = params.get("arguments", {}) if isinstance(params, dict) else None
        if not isinstance(name, str) or not isinstance(args, dict):
            raise Reject(400, "invalid_request", "tools/call needs a tool name and arguments")
        tool = self._tools.get(name)
        if tool is None:
            raise Reject(403, "insufficient_scope", "no scope is configured for this tool")
        action, template, fields = tool
        values = {f: _plain_segment(args.get(f)) for f in fields}
        bad = [f for f, v in values.items() if v is None]
        if bad:
            raise Reject(400, "invalid_request", f"argument {bad[0][:40]!r} must be one plain path segment")
        try:
            return RequiredScope(action, template.format_map(values))
        except RequiredScopeError as e:
            raise Reject(400, "invalid_request", f"the tool's resource is not valid: {e}") from None


__all__ = ["MAX_BODY", "MayflyAuth", "McpToolScopes", "Reject", "RequiredFor", "client_cert_der"]
