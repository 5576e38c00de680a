"""The MCP example end to end, as the README walks through it: the CRM's MCP
server (``examples/mcp/crm_server.py``, uvicorn over mTLS) and the support
agent (``examples/mcp/support_agent.py``), each its own process, against the
real broker: the call that works, the one out of the task (the task
deviates), and the one refused with 401 after the task is completed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import REPO, Broker, free_port

EXAMPLE = REPO / "python" / "examples" / "mcp"


@pytest.fixture()
def crm_server(broker: Broker) -> Iterator[str]:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [sys.executable, str(EXAMPLE / "crm_server.py"), "--broker", broker.url]
    argv += ["--certs", str(broker.certs), "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ctx = broker.svid("agent").current()[0]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{url}/.well-known/oauth-protected-resource/mcp", verify=ctx, timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"the MCP server did not start:\n{out[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def agent(broker: Broker, server: str, *args: str) -> list[str]:
    argv = [sys.executable, str(EXAMPLE / "support_agent.py"), *args, "--broker", broker.url]
    argv += ["--certs", str(broker.certs), "--server", server]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode().splitlines()


def test_the_tool_call_in_the_task_works(broker: Broker, crm_server: str) -> None:
    out = agent(broker, crm_server, "42")
    assert out[1].startswith('get_customer 42: {"id": "42", "name": "Ada Lovelace"'), out
    assert out[-1] == "task state: active"


def test_the_tool_call_out_of_the_task_is_refused_and_the_task_deviates(
    broker: Broker, crm_server: str
) -> None:
    out = agent(broker, crm_server, "43", "--task-for", "42")
    assert out[1].startswith("get_customer 43: refused by the broker: invalid_scope:"), out
    assert out[-1] == "task state: deviated"


def test_the_tool_refuses_the_token_once_the_task_is_completed(broker: Broker, crm_server: str) -> None:
    out = agent(broker, crm_server, "42", "--complete")
    assert out[1].startswith('get_customer 42: {"id": "42"'), out
    assert out[2].startswith("task completed (revocation ")
    assert out[3].startswith('get_customer 42: refused by the tool: HTTP 401 Bearer error="invalid_token"'), (
        out
    )
    assert "revoked" in out[3] and 'resource_metadata="' in out[3]
    assert out[-1] == "task state: completed"
