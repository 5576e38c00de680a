"""What the CRM's MCP server and the support agent agree on: the tool's
audience and the Mayfly scope of each of its tools."""

from __future__ import annotations

#: The tool's name in Mayfly's policies (a token's ``aud``).
AUDIENCE = "crm-api"
#: Each MCP tool and the scope a call of it needs (``{argument}``: the
#: call's argument, one path segment).
TOOLS = {
    "get_customer": "read:customers/eu/{customer_id}",
}
#: Where the example server listens (over mTLS).
SERVER = "https://127.0.0.1:9443"
MCP_PATH = "/mcp"
