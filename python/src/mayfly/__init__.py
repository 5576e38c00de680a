"""Mayfly for Python: agents, orchestrators and resource servers (MCP servers
too) on Mayfly's OAuth front door over mutual TLS.

- :class:`Agent` / :class:`AsyncAgent` mint task-scoped, certificate-bound
  tokens (cached per scope), wait for step-up approvals, delegate and redeem.
- :class:`Orchestrator` / :class:`AsyncOrchestrator` open, complete and look
  up tasks, and report deviations (``with orchestrator.task(...)``).
- :class:`Verifier` / :class:`AsyncVerifier` (:mod:`mayfly.verifier`) check
  tokens locally against the JWKS and a live revocation set;
  :mod:`mayfly.asgi` protects a Starlette/FastAPI/MCP app, and
  :mod:`mayfly.uvicorn` serves it with the client certificate it needs.
- :class:`SvidFiles` / :class:`WorkloadApi` are the caller's X.509-SVID.
"""

from .agent import Agent, AsyncAgent, Offer, Scope, Token, TokenCache
from .credentials import Credentials, SvidFiles, WorkloadApi
from .errors import (
    AccessDenied,
    ApprovalPending,
    CredentialsError,
    ExpiredToken,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    MayflyError,
    NotFound,
    ProtocolError,
    SlowDown,
    UnauthorizedClient,
    Unavailable,
)
from .orchestrator import AsyncOrchestrator, Ended, Orchestrator, Task
from .verifier import (
    AsyncVerifier,
    Claims,
    Refused,
    RequiredScope,
    RequiredScopeError,
    Verdict,
    Verifier,
    VerifierConfig,
)

__all__ = [
    "AccessDenied",
    "Agent",
    "ApprovalPending",
    "AsyncAgent",
    "AsyncOrchestrator",
    "AsyncVerifier",
    "Claims",
    "Credentials",
    "CredentialsError",
    "Ended",
    "ExpiredToken",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "MayflyError",
    "NotFound",
    "Offer",
    "Orchestrator",
    "ProtocolError",
    "Refused",
    "RequiredScope",
    "RequiredScopeError",
    "Scope",
    "SlowDown",
    "SvidFiles",
    "Task",
    "Token",
    "TokenCache",
    "UnauthorizedClient",
    "Unavailable",
    "Verdict",
    "Verifier",
    "VerifierConfig",
    "WorkloadApi",
]
__version__ = "0.1.0"
