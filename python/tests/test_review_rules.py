"""Rules an attacker's review asked for, checked without a broker: the MCP
tool table denies by default and needs the body, the agent's cache never hands
a token to another SVID than it was minted with, and nothing prints a token."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mayfly import Token, TokenCache
from mayfly._http import Call, parse
from mayfly._token import Compact
from mayfly.asgi import MayflyAuth, McpToolScopes, Reject
from mayfly.errors import ProtocolError

TOOLS = McpToolScopes({"get_customer": "read:customers/eu/{customer_id}"})


def rpc(method: str, **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def test_a_tool_call_needs_its_tools_scope_and_data_methods_are_denied_by_default() -> None:
    post = {"method": "POST"}
    need = TOOLS(post, rpc("tools/call", name="get_customer", arguments={"customer_id": "42"}))
    assert need is not None and (need.action, need.resource) == ("read", "customers/eu/42")
    for open_method in ("initialize", "server/discover", "tools/list", "ping", "notifications/initialized"):
        assert TOOLS(post, rpc(open_method)) is None
    for data_method in ("resources/read", "prompts/get", "completion/complete", "logging/setLevel"):
        with pytest.raises(Reject) as e:
            TOOLS(post, rpc(data_method, uri="crm://customers/eu/43"))
        assert (e.value.status, e.value.error) == (403, "insufficient_scope")


def test_a_post_without_a_body_or_with_an_unread_one_is_refused() -> None:
    with pytest.raises(Reject) as empty:
        TOOLS({"method": "POST"}, b"")
    assert empty.value.status == 400
    assert TOOLS({"method": "GET"}, b"") is None
    with pytest.raises(Reject):
        TOOLS({"method": "POST"}, None)


def test_the_tool_table_cannot_be_used_without_reading_the_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="read_body"):
        MayflyAuth(app, None, None, TOOLS, read_body=False)  # type: ignore[arg-type]


def test_the_cache_hands_a_token_only_to_the_svid_it_was_minted_with() -> None:
    cache = TokenCache()
    now = time.time()
    t = Token("x.y.z", now + 300, "read:customers/eu/42", "crm-api", "task", "jti")
    key = ("task", "crm-api", "customers/eu/42", "read")
    cache.put(key, t, now, generation=3)
    assert cache.get(key, 3) is t
    assert cache.get(key, 4) is None  # rotated: minted again, bound to the new certificate
    assert cache.get(key, 3) is None


def test_no_token_is_in_a_repr() -> None:
    secret = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert secret not in repr(Compact(secret, "kid", "p", "s"))
    assert secret not in repr(Call("POST", "https://b/oauth/token", form={"subject_token": secret}))
    assert secret not in repr(Call("POST", "https://b/v1/misuse", json={"token": secret}))
    assert secret not in repr(Token(secret, 0, "s", "a", "t", "j"))


def test_a_broker_answer_with_infinity_is_not_json() -> None:
    import httpx

    r = httpx.Response(200, content=b'{"mayfly_revocation_feed_heartbeat_seconds": Infinity}')
    with pytest.raises(ProtocolError):
        parse(r)
