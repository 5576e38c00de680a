"""An MCP server (the official ``mcp`` SDK, streamable HTTP) whose tools are
protected by Mayfly: every request carries a certificate-bound token, checked
locally against the broker's keys and live revocation feed, and each tool call
needs the scope :data:`crm.TOOLS` maps it to.

    python python/examples/mcp/crm_server.py [--broker URL] [--certs DIR] [--listen HOST:PORT]

The defaults are ``mayfly dev``'s: its broker, its certificates (the server
presents the dev ``verifier`` SVID, which also follows the revocation feed).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import uvicorn
from crm import AUDIENCE, MCP_PATH, SERVER, TOOLS
from mcp.server import MCPServer

from mayfly import SvidFiles
from mayfly.asgi import MayflyAuth, McpToolScopes
from mayfly.resource import ProtectedResource
from mayfly.uvicorn import config
from mayfly.verifier import AsyncVerifier

CUSTOMERS: dict[str, dict[str, Any]] = {
    "42": {"id": "42", "name": "Ada Lovelace", "country": "UK", "open_tickets": [4713]},
    "43": {"id": "43", "name": "Grace Hopper", "country": "US", "open_tickets": []},
}


def build(broker: str, certs: Path, url: str) -> tuple[Any, AsyncVerifier]:
    """The protected app and its verifier (start the verifier before serving)."""
    mcp = MCPServer("crm")

    @mcp.tool()
    def get_customer(customer_id: str) -> dict[str, Any]:
        """A customer record of the EU CRM."""
        return CUSTOMERS.get(customer_id, {"id": customer_id, "found": False})

    svid = SvidFiles(certs / "verifier.crt", certs / "verifier.key", certs / "ca.pem")
    verifier = AsyncVerifier(broker, svid, AUDIENCE)
    tools = McpToolScopes(TOOLS)
    resource = ProtectedResource(
        url + MCP_PATH, [broker], scopes_supported=tools.scopes_supported, resource_name="CRM (example)"
    )
    app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True, json_response=True)
    return MayflyAuth(app, verifier, resource, tools), verifier


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default="https://127.0.0.1:8443")
    p.add_argument("--certs", type=Path, default=Path(".mayfly-dev/certs"))
    p.add_argument("--listen", default=SERVER.removeprefix("https://"))
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    app, verifier = build(a.broker, a.certs, f"https://{host}:{port}")
    async with verifier:  # keys fetched, revocation feed followed
        c = a.certs
        cfg = config(
            app,
            cert=c / "verifier.crt",
            key=c / "verifier.key",
            bundle=c / "ca.pem",
            host=host,
            port=int(port),
        )
        await uvicorn.Server(cfg).serve()


if __name__ == "__main__":
    asyncio.run(main())
