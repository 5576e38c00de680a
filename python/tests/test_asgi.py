"""The ASGI middleware end to end: a small Starlette app behind MayflyAuth,
served by uvicorn with mayfly.uvicorn's mTLS protocol on a free port, called
with httpx over mutual TLS with the agent's certificate and tokens the real
broker minted."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mayfly import Agent, AsyncVerifier, Orchestrator, RequiredScope, Scope, Token, VerifierConfig
from mayfly.asgi import ASGIApp, MayflyAuth, McpToolScopes, Message, Reject
from mayfly.asgi import Scope as AsgiScope
from mayfly.resource import ProtectedResource
from mayfly.uvicorn import config, with_client_cert

from .conftest import AGENT, Broker, free_port

AUD = "crm-api"
TOOLS = McpToolScopes({"get_customer": "read:customers/eu/{customer_id}"})
START_SECONDS = 30.0


def required(scope: AsgiScope, body: bytes | None) -> RequiredScope | None:
    """``/customers/...`` needs ``read`` on that resource; ``/mcp`` maps tool calls."""
    path = str(scope.get("path", ""))
    if path == "/mcp":
        return TOOLS(scope, body)
    if path.startswith("/customers/"):
        return RequiredScope("read", path.removeprefix("/"))
    raise Reject(404, "invalid_request", "no such resource")


async def customer(request: Request) -> JSONResponse:
    claims = request.state.mayfly
    return JSONResponse({"id": request.path_params["id"], "sub": claims.sub, "task": claims.task})


async def mcp(request: Request) -> JSONResponse:
    msg = await request.json()
    return JSONResponse({"jsonrpc": "2.0", "id": msg.get("id"), "result": {"method": msg.get("method")}})


class Tool:
    """The protected app, served over mTLS in a thread, and its clients."""

    def __init__(self, broker: Broker) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.verifier = AsyncVerifier(broker.url, broker.svid("verifier"), AUD, config=VerifierConfig())
        self.resource = ProtectedResource(self.url, [broker.url], scopes_supported=TOOLS.scopes_supported)

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self.verifier.start()
            yield
            await self.verifier.aclose()

        routes = [Route("/customers/eu/{id}", customer), Route("/mcp", mcp, methods=["POST"])]
        app = Starlette(routes=routes, lifespan=lifespan)
        protected = MayflyAuth(app, self.verifier, self.resource, required, max_body=4096)
        c = broker.certs
        cfg = config(
            protected,
            cert=c / "broker.crt",
            key=c / "broker.key",
            bundle=c / "ca.pem",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the tool did not start"
            time.sleep(0.02)
        self.client = httpx.Client(verify=broker.svid("agent").current()[0], base_url=self.url)
        self.thief = httpx.Client(verify=broker.svid("sub-agent").current()[0], base_url=self.url)

    def close(self) -> None:
        self.client.close()
        self.thief.close()
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tool(broker: Broker) -> Iterator[Tool]:
    t = Tool(broker)
    yield t
    t.close()


@pytest.fixture(scope="module")
def minted(broker: Broker, tool: Tool) -> Iterator[tuple[Orchestrator, Agent]]:
    with (
        Orchestrator(broker.url, broker.svid("orchestrator")) as o,
        Agent(broker.url, broker.svid("agent")) as a,
    ):
        yield o, a


def mint(minted: tuple[Orchestrator, Agent], resource: str = "customers/eu/*") -> tuple[str, Token]:
    o, a = minted
    task = o.open_task(AGENT, "support-triage", "answer ticket 4713", [Scope(AUD, "customers/eu/*", "read")])
    return task.id, a.mint(task.id, AUD, resource, "read")


def get(
    tool: Tool, path: str, token: Token | None = None, client: httpx.Client | None = None
) -> httpx.Response:
    headers = {"Authorization": token.authorization} if token is not None else {}
    return (client or tool.client).get(path, headers=headers)


def fresh(tool: Tool, token: Token) -> None:
    """Waits (bounded) until the tool's verifier has replayed the revocations."""
    deadline = time.monotonic() + START_SECONDS
    while get(tool, "/customers/eu/42", token).status_code == 503:
        assert time.monotonic() < deadline, "the tool's verifier never synced"
        time.sleep(0.05)


def challenge(r: httpx.Response) -> str:
    return str(r.headers.get("www-authenticate", ""))


def test_without_a_token_the_answer_is_a_401_challenge_naming_the_metadata(tool: Tool) -> None:
    r = get(tool, "/customers/eu/42")
    assert r.status_code == 401
    assert challenge(r) == f'Bearer resource_metadata="{tool.url}/.well-known/oauth-protected-resource"'
    assert r.json() == {"error_description": "a bearer token is required"}
    r = tool.client.get("/customers/eu/42", headers={"Authorization": "Bearer a b"})
    assert r.status_code == 400 and 'error="invalid_request"' in challenge(r)


def test_the_protected_resource_metadata_is_served_at_its_well_known_path(tool: Tool, broker: Broker) -> None:
    r = tool.client.get("/.well-known/oauth-protected-resource")
    assert r.status_code == 200
    assert r.json() == {
        "resource": tool.url,
        "authorization_servers": [broker.url],
        "bearer_methods_supported": ["header"],
        "tls_client_certificate_bound_access_tokens": True,
        "scopes_supported": ["read:customers/eu/*"],
    }


def test_a_valid_token_reaches_the_app_with_its_claims(tool: Tool, minted: Any) -> None:
    task, token = mint(minted, "customers/eu/42")
    fresh(tool, token)
    r = get(tool, "/customers/eu/42", token)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "42", "sub": AGENT, "task": task}


def test_a_token_that_does_not_cover_the_request_is_a_403_naming_the_scope(tool: Tool, minted: Any) -> None:
    _, token = mint(minted, "customers/eu/42")
    fresh(tool, token)
    r = get(tool, "/customers/eu/43", token)
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in challenge(r) and 'scope="read:customers/eu/43"' in challenge(r)
    assert "resource_metadata=" in challenge(r)
    assert r.json()["scope"] == "read:customers/eu/43"


def test_a_bad_token_or_another_certificate_is_a_401_invalid_token(tool: Tool, minted: Any) -> None:
    _, token = mint(minted)
    fresh(tool, token)
    r = tool.client.get("/customers/eu/42", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401 and 'error="invalid_token"' in challenge(r)
    r = get(tool, "/customers/eu/42", token, client=tool.thief)
    assert r.status_code == 401 and 'error="invalid_token"' in challenge(r)
    assert "another client certificate" in r.json()["error_description"]


def test_after_the_task_completes_its_token_is_a_401(tool: Tool, minted: Any) -> None:
    task, token = mint(minted)
    fresh(tool, token)
    assert get(tool, "/customers/eu/42", token).status_code == 200
    minted[0].complete(task)
    deadline = time.monotonic() + 1.0
    while (r := get(tool, "/customers/eu/42", token)).status_code == 200:
        assert time.monotonic() < deadline, "still accepted a second after completion"
    assert r.status_code == 401 and 'error="invalid_token"' in challenge(r)
    assert "revoked" in r.json()["error_description"]


def call(tool: Tool, token: Token, msg: Any, raw: bytes | None = None) -> httpx.Response:
    body = raw if raw is not None else json.dumps(msg).encode()
    headers = {"Authorization": token.authorization, "Content-Type": "application/json"}
    return tool.client.post("/mcp", content=body, headers=headers)


def test_a_tools_call_needs_its_tools_scope_and_other_mcp_messages_any_valid_token(
    tool: Tool, minted: Any
) -> None:
    _, token = mint(minted, "customers/eu/42")
    fresh(tool, token)

    def tools_call(args: Any, name: str = "get_customer") -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": name, "arguments": args},
        }

    assert call(tool, token, tools_call({"customer_id": "42"})).status_code == 200
    assert call(tool, token, tools_call({"customer_id": 42})).status_code == 200
    r = call(tool, token, tools_call({"customer_id": "43"}))
    assert r.status_code == 403 and 'scope="read:customers/eu/43"' in challenge(r)
    for bad in ["*", "42/notes", "", " 42", "..", None, True, 4.2, ["42"]]:
        assert call(tool, token, tools_call({"customer_id": bad})).status_code == 400, bad
    assert call(tool, token, tools_call({})).status_code == 400
    assert call(tool, token, tools_call({"customer_id": "42"}, name="delete_all")).status_code == 403
    assert call(tool, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).status_code == 200
    dup = b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "method": "ping"}'
    assert call(tool, token, None, raw=dup).status_code == 400, "a repeated member is never guessed at"
    assert call(tool, token, None, raw=b"[1, 2]").status_code == 400
    assert call(tool, token, None, raw=b"x" * 5000).status_code == 413


@pytest.mark.anyio
async def test_without_a_client_certificate_or_a_started_verifier_it_fails_closed(broker: Broker) -> None:
    reached: list[AsgiScope] = []

    async def app(scope: AsgiScope, receive: Any, send: Any) -> None:
        reached.append(scope)

    verifier = AsyncVerifier(broker.url, broker.svid("verifier"), AUD)  # never started: stale
    guarded = MayflyAuth(app, verifier, ProtectedResource("https://tool.example", [broker.url]), required)
    pem = (broker.certs / "agent.crt").read_text()
    bearer = {"Authorization": "Bearer abc.def.ghi"}
    cases: list[tuple[ASGIApp, dict[str, str], int]] = [
        (guarded, {}, 401),
        (guarded, bearer, 401),  # no certificate: no token can be bound to it
        (with_client_cert(guarded, "not a certificate"), bearer, 401),
        (with_client_cert(guarded, pem), bearer, 503),
    ]
    for asgi, headers, status in cases:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="https://tool.example") as c:
            r = await c.get("/customers/eu/42", headers=headers)
        assert r.status_code == status, r.text
    assert not reached
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(msg: Message) -> None:
        sent.append(msg)

    await guarded({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    await verifier.aclose()
