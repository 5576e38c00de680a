"""The orchestrator's calls against the real broker: open, look up, complete,
report a deviation, and the task context managers."""

from __future__ import annotations

import pytest

import mayfly
from mayfly import Agent, AsyncOrchestrator, Orchestrator, Scope

from .conftest import AGENT, CRM_EU, SUPPORT, Broker


def test_a_task_is_opened_read_and_completed_and_its_tokens_die(
    broker: Broker, orchestrator: Orchestrator, agent: Agent
) -> None:
    t = orchestrator.open_task(AGENT, SUPPORT, "answer ticket 1", [CRM_EU], duration=300)
    assert t.active and t.agent == AGENT and t.scopes == (CRM_EU,)
    assert (t.expires_at - t.created_at).total_seconds() == pytest.approx(300, abs=1)
    token = agent.mint(t.id, "crm-api", "customers/eu/42", "read")
    assert orchestrator.get_task(t.id).tokens_minted == 1
    ended = orchestrator.complete(t.id)
    assert ended.task.state == "completed" and ended.revocation_sequence >= 1
    seen = broker.cli("token", "introspect", token.access_token, identity="verifier")
    assert seen["active"] is False


def test_the_task_block_completes_the_task_when_it_ends(orchestrator: Orchestrator, agent: Agent) -> None:
    with orchestrator.task(AGENT, SUPPORT, "answer ticket 2", [CRM_EU], duration=300) as t:
        agent.mint(t.id, "crm-api", "customers/eu/42", "read")
    assert orchestrator.get_task(t.id).state == "completed"


def test_the_task_block_reports_a_deviation_when_it_raises(orchestrator: Orchestrator) -> None:
    with (
        pytest.raises(RuntimeError, match="the agent went off script"),
        orchestrator.task(AGENT, SUPPORT, "answer ticket 3", [CRM_EU], duration=300) as t,
    ):
        raise RuntimeError("the agent went off script")
    after = orchestrator.get_task(t.id)
    assert after.state == "deviated"
    assert "RuntimeError: the agent went off script" in after.end_reason


def test_a_task_the_broker_deviated_is_left_as_it_is_and_the_error_goes_on(
    orchestrator: Orchestrator, agent: Agent
) -> None:
    with (
        pytest.raises(mayfly.InvalidScope),
        orchestrator.task(AGENT, SUPPORT, "answer ticket 4", [CRM_EU], duration=300) as t,
    ):
        agent.mint(t.id, "crm-api", "customers/us/1", "read")
    after = orchestrator.get_task(t.id)
    assert after.state == "deviated" and "customers/us/1" in after.end_reason


def test_a_deviation_is_reported_only_by_the_opener_and_only_once(
    broker: Broker, orchestrator: Orchestrator
) -> None:
    t = orchestrator.open_task(AGENT, SUPPORT, "answer ticket 5", [CRM_EU], duration=300)
    with Orchestrator(broker.url, broker.svid("finance-orchestrator")) as other:
        with pytest.raises(mayfly.InvalidGrant):
            other.report_deviation(t.id, "not mine")
        with pytest.raises(mayfly.InvalidGrant):
            other.complete(t.id)
    assert orchestrator.get_task(t.id).active
    ended = orchestrator.report_deviation(t.id, "the agent asked for a refund tool")
    assert ended.task.state == "deviated"
    with pytest.raises(mayfly.InvalidGrant) as e:
        orchestrator.report_deviation(t.id, "again")
    assert "deviated" in e.value.description
    with pytest.raises(mayfly.InvalidRequest) as bad:
        orchestrator.report_deviation(t.id, "")
    assert "reason" in bad.value.description


def test_what_the_workflow_does_not_allow_is_refused_with_the_reason(orchestrator: Orchestrator) -> None:
    with pytest.raises(mayfly.AccessDenied) as e:
        orchestrator.open_task(AGENT, SUPPORT, "x", [Scope("crm-api", "customers/us/*", "read")])
    assert e.value.description
    with pytest.raises(mayfly.InvalidRequest) as bad:
        orchestrator.open_task("not-a-spiffe-id", SUPPORT, "x", [CRM_EU])
    assert "agent" in bad.value.description
    with pytest.raises(mayfly.InvalidGrant):
        orchestrator.get_task("00000000-0000-4000-8000-000000000000")


def test_an_agent_cannot_open_tasks(broker: Broker) -> None:
    with Orchestrator(broker.url, broker.svid("agent")) as not_an_orchestrator:
        with pytest.raises(mayfly.UnauthorizedClient):
            not_an_orchestrator.open_task(AGENT, SUPPORT, "x", [CRM_EU])


@pytest.mark.anyio
async def test_the_async_task_block_completes_or_reports(broker: Broker) -> None:
    async with AsyncOrchestrator(broker.url, broker.svid("orchestrator")) as o:
        async with o.task(AGENT, SUPPORT, "answer ticket 6", [CRM_EU], duration=300) as t:
            assert (await o.get_task(t.id)).active
        assert (await o.get_task(t.id)).state == "completed"
        with pytest.raises(ValueError):
            async with o.task(AGENT, SUPPORT, "answer ticket 7", [CRM_EU], duration=300) as t2:
                raise ValueError("bad plan")
        assert (await o.get_task(t2.id)).state == "deviated"
