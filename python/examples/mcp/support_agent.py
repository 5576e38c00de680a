"""A support agent that calls the CRM's MCP tools with Mayfly tokens: its
orchestrator opens a task for customer ``--customer`` (the ticket's), and
every tool call carries a token minted for exactly that call's scope, over
mTLS with the agent's SVID.

    python python/examples/mcp/support_agent.py 42                 # works
    python python/examples/mcp/support_agent.py 43 --task-for 42   # out of the task: refused, the task deviates
    python python/examples/mcp/support_agent.py 42 --complete      # completes the task, then calls again: 401
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx2
from crm import AUDIENCE, MCP_PATH, SERVER, TOOLS
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mayfly import AsyncAgent, AsyncOrchestrator, MayflyError, Scope, SvidFiles
from mayfly.asgi import McpToolScopes

AGENT = "spiffe://example.org/agent/support-eu-1"


class ToolTokens(httpx2.Auth):
    """Puts on each MCP request a token for the scope it needs: a tool call
    the scope of its tool (the same table the server checks), anything else
    the task's ``default`` scope. Tokens come from the agent's cache."""

    requires_request_body = True

    def __init__(self, agent: AsyncAgent, task: str, default: Scope) -> None:
        self.agent, self.task, self.default = agent, task, default
        self.tools = McpToolScopes(TOOLS)
        #: The tool's last refusal (the SDK reports it only as an error
        #: response): its status and ``WWW-Authenticate`` challenge.
        self.refusal: str | None = None

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        required = self.tools({"method": request.method}, request.content)
        action, resource = (
            (self.default.action, self.default.resource)
            if required is None
            else (required.action, required.resource)
        )
        token = await self.agent.token(self.task, AUDIENCE, resource, action, ttl=120)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if response.status_code in (401, 403, 503):
            www = response.headers.get("www-authenticate", "")
            self.refusal = f"HTTP {response.status_code} {www}".strip()


async def call(
    agent: AsyncAgent, task: str, default: Scope, url: str, ssl_ctx: ssl.SSLContext, customer: str
) -> str:
    """One ``get_customer`` call; what came back, or who refused it and why."""
    tokens = ToolTokens(agent, task, default)
    async with httpx2.AsyncClient(verify=ssl_ctx, auth=tokens) as http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as mcp:
                result = await mcp.call_tool("get_customer", {"customer_id": customer})
                return json.dumps(result.structured_content)
        except Exception as e:  # the SDK wraps errors in task groups and its own types
            if tokens.refusal is not None:
                return f"refused by the tool: {tokens.refusal}"
            refused = _broker_refusal(e)
            if refused is not None:
                return f"refused by the broker: {refused.error}: {refused.description}"
            return f"failed: {type(e).__name__}: {e}"


def _broker_refusal(e: BaseException) -> MayflyError | None:
    """The broker's refusal under the SDK's wrapping, if there is one."""
    seen: list[BaseException] = [e]
    while seen:
        x = seen.pop()
        if isinstance(x, MayflyError):
            return x
        seen.extend(getattr(x, "exceptions", ()))
        seen.extend(n for n in (x.__cause__, x.__context__) if n is not None)
    return None


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("customer", help="the customer to look up")
    p.add_argument("--task-for", help="the customer the task is for (default: the one looked up)")
    p.add_argument("--complete", action="store_true", help="complete the task, then call again")
    p.add_argument("--broker", default="https://127.0.0.1:8443")
    p.add_argument("--certs", type=Path, default=Path(".mayfly-dev/certs"))
    p.add_argument("--server", default=SERVER)
    a = p.parse_args()
    c = a.certs
    agent_svid = SvidFiles(c / "agent.crt", c / "agent.key", c / "ca.pem")
    orch_svid = SvidFiles(c / "orchestrator.crt", c / "orchestrator.key", c / "ca.pem")
    declared = Scope(AUDIENCE, f"customers/eu/{a.task_for or a.customer}", "read")
    url = a.server + MCP_PATH
    async with AsyncOrchestrator(a.broker, orch_svid) as orch, AsyncAgent(a.broker, agent_svid) as agent:
        task = await orch.open_task(AGENT, "support-triage", "answer the customer's ticket", [declared], 600)
        print(f"task {task.id} for {declared.claim}")
        ctx = agent_svid.current()[0]
        print(f"get_customer {a.customer}: {await call(agent, task.id, declared, url, ctx, a.customer)}")
        if a.complete:
            ended = await orch.complete(task.id)
            print(f"task completed (revocation {ended.revocation_sequence})")
            await asyncio.sleep(0.5)  # the tool hears of it within milliseconds
            print(f"get_customer {a.customer}: {await call(agent, task.id, declared, url, ctx, a.customer)}")
        print(f"task state: {(await orch.get_task(task.id)).state}")


if __name__ == "__main__":
    asyncio.run(main())
