"""The agent's calls against the real broker: mint, the per-scope cache,
step-up, delegation, rotated SVID files, and typed refusals."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import mayfly
from mayfly import Agent, Orchestrator, Scope, SvidFiles, Task, TokenCache

from .conftest import AGENT, FINANCE_AGENT, SUB_AGENT, Broker


def thumbprint(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def claims(token: mayfly.Token) -> dict[str, object]:
    c: dict[str, object] = jwt.decode(token.access_token, options={"verify_signature": False})
    return c


def test_a_minted_token_is_for_one_scope_of_the_task_and_bound_to_the_agent(
    broker: Broker, agent: Agent, support_task: Task
) -> None:
    t = agent.mint(support_task.id, "crm-api", "customers/eu/42", "read", ttl=120)
    assert t.scope == "read:customers/eu/42"
    assert (t.audience, t.task_id) == ("crm-api", support_task.id)
    assert 100 < t.expires_in() <= 120
    c = claims(t)
    assert c["sub"] == AGENT
    assert c["cnf"] == {"x5t#S256": thumbprint((broker.certs / "agent.crt").read_bytes())}
    assert t.access_token not in repr(t)


def test_the_cache_hands_out_one_token_per_scope_and_renews_it_before_it_expires(
    broker: Broker, support_task: Task
) -> None:
    now = [1_000_000.0]
    import time as _time

    offset = _time.time() - now[0]

    def clock() -> float:
        return now[0] + offset

    with Agent(broker.url, broker.svid("agent"), clock=clock, cache=TokenCache(clock=clock)) as a:
        first = a.token(support_task.id, "crm-api", "customers/eu/42", "read", ttl=100)
        assert a.token(support_task.id, "crm-api", "customers/eu/42", "read", ttl=100) is first
        other = a.token(support_task.id, "crm-api", "customers/eu/43", "read", ttl=100)
        assert other.jti != first.jti and len(a.cache) == 2
        now[0] += 70  # 30 s of 100 left: still more than a fifth
        assert a.token(support_task.id, "crm-api", "customers/eu/42", "read", ttl=100) is first
        now[0] += 15  # 15 s left: renewed
        renewed = a.token(support_task.id, "crm-api", "customers/eu/42", "read", ttl=100)
        assert renewed.jti != first.jti


def test_the_cache_forgets_a_task_the_broker_says_is_over(
    agent: Agent, orchestrator: Orchestrator, support_task: Task
) -> None:
    agent.token(support_task.id, "crm-api", "customers/eu/42", "read")
    orchestrator.complete(support_task.id)
    with pytest.raises(mayfly.InvalidGrant) as e:
        agent.mint(support_task.id, "crm-api", "customers/eu/43", "read")
    assert e.value.error == "invalid_grant" and "completed" in e.value.description
    assert len(agent.cache) == 0


def test_a_scope_outside_the_task_is_refused_and_the_task_deviates(
    agent: Agent, orchestrator: Orchestrator, support_task: Task
) -> None:
    with pytest.raises(mayfly.InvalidScope) as e:
        agent.mint(support_task.id, "crm-api", "customers/us/7", "read")
    assert e.value.status == 400 and e.value.description
    assert orchestrator.get_task(support_task.id).state == "deviated"


def test_an_unknown_task_is_refused_naming_it(agent: Agent) -> None:
    with pytest.raises(mayfly.InvalidGrant):
        agent.mint("00000000-0000-4000-8000-000000000000", "crm-api", "customers/eu/1", "read")
    with pytest.raises(mayfly.InvalidRequest) as e:
        agent.mint("not-a-task", "crm-api", "customers/eu/1", "read")
    assert "task_id" in e.value.description


def finance_task(broker: Broker) -> Task:
    with Orchestrator(broker.url, broker.svid("finance-orchestrator")) as o:
        return o.open_task(
            FINANCE_AGENT,
            "payments",
            "pay invoice 77",
            [Scope("payments-api", "invoices/77/payment", "pay")],
            duration=600,
        )


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_step_up_action_waits_for_the_security_team(broker: Broker, decision: str) -> None:
    task = finance_task(broker)
    with Agent(broker.url, broker.svid("finance-agent")) as a:
        with pytest.raises(mayfly.ApprovalPending) as pending:
            a.mint(task.id, "payments-api", "invoices/77/payment", "pay", ttl=60)
        p = pending.value
        assert p.approval and p.interval >= 1
        broker.cli("approvals", decision, p.approval, "--reason", f"python test: {decision}")
        if decision == "approve":
            t = a.wait_for_approval(p, timeout=30)
            assert t.scope == "pay:invoices/77/payment" and claims(t)["sub"] == FINANCE_AGENT
        else:
            with pytest.raises(mayfly.AccessDenied):
                a.wait_for_approval(p, timeout=30)


def test_waiting_for_an_undecided_approval_times_out(broker: Broker) -> None:
    task = finance_task(broker)
    with Agent(broker.url, broker.svid("finance-agent")) as a:
        with pytest.raises(mayfly.ApprovalPending) as pending:
            a.mint(task.id, "payments-api", "invoices/77/payment", "pay", ttl=60)
        with pytest.raises(TimeoutError):
            a.wait_for_approval(pending.value, timeout=0.5)


def test_a_delegation_is_redeemed_by_its_sub_agent_and_a_wider_one_refused(
    broker: Broker, agent: Agent, orchestrator: Orchestrator, support_task: Task
) -> None:
    parent = agent.mint(support_task.id, "crm-api", "customers/eu/42", "read", ttl=120)
    offer = agent.offer(parent, SUB_AGENT, Scope("crm-api", "customers/eu/42", "read"), ttl=60)
    assert offer.depth == 1 and offer.offer not in repr(offer)
    with Agent(broker.url, broker.svid("sub-agent")) as sub:
        child = sub.redeem(offer)
        c = claims(child)
        # RFC 8693 §4.1: the subject stays the task's agent, the sub-agent acts.
        assert c["sub"] == AGENT and c["act"] == {"sub": SUB_AGENT}
        assert c["cnf"] == {"x5t#S256": thumbprint((broker.certs / "sub-agent.crt").read_bytes())}
        with pytest.raises(mayfly.InvalidGrant):
            sub.redeem(offer)  # once
    # Wider than the parent, though inside the task: refused, not a deviation.
    with pytest.raises(mayfly.InvalidScope) as e:
        agent.offer(parent, SUB_AGENT, Scope("crm-api", "customers/eu/*", "read"), ttl=60)
    assert "customers/eu/*" in e.value.description
    assert orchestrator.get_task(support_task.id).state == "active"
    # Outside the task: a deviation.
    with pytest.raises(mayfly.InvalidScope):
        agent.offer(parent, SUB_AGENT, Scope("tickets", "tickets/1", "comment"), ttl=60)
    assert orchestrator.get_task(support_task.id).state == "deviated"


def test_rotated_svid_files_are_picked_up_without_a_restart(
    broker: Broker, tmp_path: Path, support_task: Task
) -> None:
    # As spiffe-helper keeps them: one directory, files rewritten in place.
    cert, key = tmp_path / "svid.pem", tmp_path / "svid_key.pem"
    shutil.copy(broker.certs / "sub-agent.crt", cert)
    shutil.copy(broker.certs / "sub-agent.key", key)
    files = SvidFiles(cert, key, broker.certs / "ca.pem", check_interval=0)
    with Agent(broker.url, files) as a:
        with pytest.raises(mayfly.InvalidGrant):  # the task is support-eu-1's
            a.mint(support_task.id, "crm-api", "customers/eu/42", "read")
        # The rotation: a half-written set (new certificate, old key) is not
        # loaded; the whole set is.
        shutil.copy(broker.certs / "agent.crt", cert)
        assert not files.reload()
        shutil.copy(broker.certs / "agent.key", key)
        t = a.mint(support_task.id, "crm-api", "customers/eu/42", "read")
        assert files.generation == 1
        assert claims(t)["cnf"] == {"x5t#S256": thumbprint((broker.certs / "agent.crt").read_bytes())}


def test_a_caller_without_the_role_is_refused(broker: Broker, support_task: Task) -> None:
    with Agent(broker.url, broker.svid("verifier")) as not_an_agent:
        with pytest.raises(mayfly.UnauthorizedClient) as e:
            not_an_agent.mint(support_task.id, "crm-api", "customers/eu/42", "read")
        assert e.value.status == 400


@pytest.mark.anyio
async def test_the_async_agent_mints_caches_and_delegates(broker: Broker, support_task: Task) -> None:
    async with mayfly.AsyncAgent(broker.url, broker.svid("agent")) as a:
        t = await a.token(support_task.id, "crm-api", "customers/eu/42", "read")
        assert await a.token(support_task.id, "crm-api", "customers/eu/42", "read") is t
        offer = await a.offer(t, SUB_AGENT, Scope("crm-api", "customers/eu/42", "read"), ttl=60)
    async with mayfly.AsyncAgent(broker.url, broker.svid("sub-agent")) as sub:
        child = await sub.redeem(offer)
        assert claims(child)["act"] == {"sub": SUB_AGENT}
