"""What the broker refused, as exceptions that carry its OAuth answer.

Every refusal is a :class:`MayflyError` with the RFC 6749 §5.2 ``error`` code and
the broker's ``error_description`` (the sentence a gRPC client reads); the
subclass says which code, so callers catch what they can act on.
"""

from __future__ import annotations

from typing import Any


class MayflyError(Exception):
    """The broker (or the HTTP exchange with it) refused a call."""

    def __init__(self, error: str, description: str, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class InvalidRequest(MayflyError):
    """A parameter missing, malformed or repeated (the description names it)."""


class InvalidClient(MayflyError):
    """No valid X.509-SVID, or a ``client_id`` that is not the certificate's."""


class UnauthorizedClient(MayflyError):
    """The caller's roles do not allow the call."""


class InvalidGrant(MayflyError):
    """The task, offer or approval the request stands on cannot be used:
    unknown, another agent's, not active, out of budget, spent or lapsed."""


class InvalidScope(MayflyError):
    """A scope outside the task (the broker deviates the task), or malformed."""


class InvalidTarget(MayflyError):
    """No audience, or another audience than the parent token's."""


class AccessDenied(MayflyError):
    """Policy said no, issuance is frozen, or a step-up approval was denied."""


class ExpiredToken(MayflyError):
    """A step-up approval lapsed before it was decided or used."""


class Unavailable(MayflyError):
    """The broker or its store is down: nothing was issued; retry later."""

    def __init__(
        self, error: str, description: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(error, description, status)
        self.retry_after = retry_after


class NotFound(MayflyError):
    """A path the broker does not serve (404): a broker older than this
    package, or a proxy in the way. An unknown task is :class:`InvalidGrant`."""


class ApprovalPending(MayflyError):
    """The action needs a security team's approval: wait for it with
    ``wait_for_approval(pending)``."""

    def __init__(self, error: str, description: str, status: int | None, body: dict[str, Any]) -> None:
        super().__init__(error, description, status)
        self.approval = str(body.get("device_code", ""))
        self.interval = float(body.get("interval", 5))
        self.expires_in = float(body.get("expires_in", 0))


class SlowDown(MayflyError):
    """Step-up polled sooner than its interval allows."""


class ProtocolError(MayflyError):
    """The broker's answer is not what the protocol says (not JSON, a field
    missing): a broker or proxy problem, never a decision."""

    def __init__(self, description: str, status: int | None = None) -> None:
        super().__init__("protocol_error", description, status)


class CredentialsError(Exception):
    """The SVID (certificate, key, bundle) could not be loaded."""


_BY_CODE: dict[str, type[MayflyError]] = {
    "invalid_request": InvalidRequest,
    "invalid_client": InvalidClient,
    "unauthorized_client": UnauthorizedClient,
    "invalid_grant": InvalidGrant,
    "invalid_scope": InvalidScope,
    "invalid_target": InvalidTarget,
    "access_denied": AccessDenied,
    "expired_token": ExpiredToken,
    "slow_down": SlowDown,
    "temporarily_unavailable": Unavailable,
}


def from_answer(status: int, body: Any, retry_after: str | None = None) -> MayflyError:
    """The exception for an error answer (RFC 6749 §5.2 JSON)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        if status == 503:
            return Unavailable("temporarily_unavailable", f"HTTP {status}", status)
        return ProtocolError(f"HTTP {status} without an OAuth error body", status)
    error = body["error"]
    description = body.get("error_description")
    if not isinstance(description, str):
        description = ""
    if error == "authorization_pending":
        return ApprovalPending(error, description, status, body)
    if status == 404 and error == "invalid_request":
        return NotFound(error, description, status)
    if error == "temporarily_unavailable":
        seconds: float | None = None
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = None
        return Unavailable(error, description, status, seconds)
    return _BY_CODE.get(error, MayflyError)(error, description, status)
