"""The orchestrator's side: open tasks for agents, look them up, complete them,
and report a deviation when a task goes wrong.

``with orchestrator.task(...) as task:`` opens a task for the block: it is
completed when the block ends (every token of it revoked) and reported as
deviated when the block raises. :class:`Orchestrator` is synchronous,
:class:`AsyncOrchestrator` its asyncio twin.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote as urlquote

from ._http import AsyncConnection, Call, Endpoints, SyncConnection
from .agent import Scope
from .credentials import Credentials
from .errors import InvalidGrant, ProtocolError

#: The most of an exception's text a deviation report carries.
REASON_CHARS = 500


@dataclass(frozen=True)
class Task:
    """A task as the broker holds it."""

    id: str
    agent: str
    workflow: str
    objective: str
    scopes: tuple[Scope, ...]
    state: str
    opened_by: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str
    tokens_minted: int

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True)
class Ended:
    """A task the orchestrator ended, and the revocation event that ended its tokens."""

    task: Task
    revocation_sequence: int


def _time(v: Any, name: str) -> datetime:
    if not isinstance(v, str):
        raise ProtocolError(f"the task's {name} is not a time")
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as e:
        raise ProtocolError(f"the task's {name} is not an RFC 3339 time") from e


def _task_from(body: Any) -> Task:
    t = body.get("task") if isinstance(body, dict) else None
    if not isinstance(t, dict):
        raise ProtocolError("the answer has no task")
    try:
        return Task(
            id=str(t["id"]),
            agent=str(t["agent"]),
            workflow=str(t["workflow"]),
            objective=str(t["objective"]),
            scopes=tuple(
                Scope(str(s["audience"]), str(s["resource"]), str(s["action"])) for s in t["scopes"]
            ),
            state=str(t["state"]),
            opened_by=str(t["opened_by"]),
            created_at=_time(t["created_at"], "created_at"),
            expires_at=_time(t["expires_at"], "expires_at"),
            ended_at=None if t.get("ended_at") is None else _time(t["ended_at"], "ended_at"),
            end_reason=str(t.get("end_reason", "")),
            tokens_minted=int(t.get("tokens_minted", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"the task is missing a field: {e}") from e


def _ended_from(body: Any) -> Ended:
    seq = body.get("revocation_sequence") if isinstance(body, dict) else None
    if not isinstance(seq, int):
        raise ProtocolError("the answer has no revocation_sequence")
    return Ended(_task_from(body), seq)


def _seconds(duration: timedelta | float) -> int:
    s = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    return max(int(s), 0)


def _open_call(
    e: Endpoints,
    agent: str,
    workflow: str,
    objective: str,
    scopes: Sequence[Scope],
    duration: timedelta | float,
) -> Call:
    return Call(
        "POST",
        e.tasks,
        json={
            "agent": agent,
            "workflow": workflow,
            "objective": objective,
            "scopes": [s.as_json() for s in scopes],
            "duration_seconds": _seconds(duration),
        },
    )


def _task_url(e: Endpoints, task_id: str, verb: str = "") -> str:
    return f"{e.tasks}/{urlquote(task_id, safe='')}{verb}"


def _deviation_reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


class Orchestrator:
    """An orchestrator's calls to the broker (synchronous)."""

    def __init__(self, broker: str, credentials: Credentials, *, timeout: float = 10.0) -> None:
        self._conn = SyncConnection(broker, credentials, timeout)

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def open_task(
        self,
        agent: str,
        workflow: str,
        objective: str,
        scopes: Sequence[Scope],
        duration: timedelta | float = timedelta(minutes=30),
    ) -> Task:
        """Open a task for ``agent`` (a SPIFFE ID) under ``workflow``; the
        broker checks the declared scopes against the workflow's policy."""
        e = self._conn.endpoints()
        return _task_from(self._conn.call(_open_call(e, agent, workflow, objective, scopes, duration)))

    def get_task(self, task_id: str) -> Task:
        return _task_from(self._conn.call(Call("GET", _task_url(self._conn.endpoints(), task_id))))

    def complete(self, task_id: str) -> Ended:
        """Complete the task: every token of it is revoked."""
        e = self._conn.endpoints()
        return _ended_from(self._conn.call(Call("POST", _task_url(e, task_id, "/complete"), json={})))

    def report_deviation(self, task_id: str, reason: str) -> Ended:
        """The task went wrong: it ends as ``deviated``, every token of it revoked."""
        e = self._conn.endpoints()
        call = Call("POST", _task_url(e, task_id, "/deviate"), json={"reason": reason})
        return _ended_from(self._conn.call(call))

    @contextlib.contextmanager
    def task(
        self,
        agent: str,
        workflow: str,
        objective: str,
        scopes: Sequence[Scope],
        duration: timedelta | float = timedelta(minutes=30),
    ) -> Iterator[Task]:
        """A task for the block: completed when it ends, reported as deviated
        (with the exception's type and message) when it raises; the exception
        goes on. A task the broker already ended is left as it is."""
        t = self.open_task(agent, workflow, objective, scopes, duration)
        try:
            yield t
        except BaseException as error:
            with contextlib.suppress(InvalidGrant):
                self.report_deviation(t.id, _deviation_reason(error))
            raise
        else:
            with contextlib.suppress(InvalidGrant):
                self.complete(t.id)


class AsyncOrchestrator:
    """:class:`Orchestrator`'s asyncio twin."""

    def __init__(self, broker: str, credentials: Credentials, *, timeout: float = 10.0) -> None:
        self._conn = AsyncConnection(broker, credentials, timeout)

    async def __aenter__(self) -> AsyncOrchestrator:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def open_task(
        self,
        agent: str,
        workflow: str,
        objective: str,
        scopes: Sequence[Scope],
        duration: timedelta | float = timedelta(minutes=30),
    ) -> Task:
        e = await self._conn.endpoints()
        return _task_from(await self._conn.call(_open_call(e, agent, workflow, objective, scopes, duration)))

    async def get_task(self, task_id: str) -> Task:
        return _task_from(
            await self._conn.call(Call("GET", _task_url(await self._conn.endpoints(), task_id)))
        )

    async def complete(self, task_id: str) -> Ended:
        e = await self._conn.endpoints()
        return _ended_from(await self._conn.call(Call("POST", _task_url(e, task_id, "/complete"), json={})))

    async def report_deviation(self, task_id: str, reason: str) -> Ended:
        e = await self._conn.endpoints()
        call = Call("POST", _task_url(e, task_id, "/deviate"), json={"reason": reason})
        return _ended_from(await self._conn.call(call))

    @contextlib.asynccontextmanager
    async def task(
        self,
        agent: str,
        workflow: str,
        objective: str,
        scopes: Sequence[Scope],
        duration: timedelta | float = timedelta(minutes=30),
    ) -> AsyncIterator[Task]:
        t = await self.open_task(agent, workflow, objective, scopes, duration)
        try:
            yield t
        except BaseException as error:
            with contextlib.suppress(InvalidGrant):
                await self.report_deviation(t.id, _deviation_reason(error))
            raise
        else:
            with contextlib.suppress(InvalidGrant):
                await self.complete(t.id)


__all__ = ["AsyncOrchestrator", "Ended", "Orchestrator", "Task"]
