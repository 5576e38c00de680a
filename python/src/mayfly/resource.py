"""The HTTP edge of a protected tool, as the Rust verifier has it
(``src/verifier/{bearer,resource,answer}.rs``): the bearer token of a request
(RFC 6750 §2.1), the tool's RFC 9728 protected resource metadata, and the
answer to every refusal: a status, a ``WWW-Authenticate`` challenge pointing
to the metadata (as the MCP authorization spec requires) and a small JSON body.
Framework-neutral: :mod:`mayfly.asgi` puts it on ASGI.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ._scope import RequiredScopeError, check_declared
from .verifier import Refused

#: The well-known URI suffix of RFC 9728 §3.
WELL_KNOWN = "/.well-known/oauth-protected-resource"
CONTENT_TYPE = "application/json"
#: The longest ``error_description`` sent; logs say the rest.
MAX_DESCRIPTION = 120

_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_TCHARS = re.compile(rb"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_HOST = re.compile(r"[A-Za-z0-9\-._~]*")


class BearerError(str, Enum):
    """Why a request carries no usable bearer token (never echoes the header)."""

    MISSING = "no Authorization header"
    OTHER_SCHEME = "the Authorization header uses another scheme than Bearer"
    REPEATED = "more than one Authorization header"
    MALFORMED = "the Authorization header is not Bearer and one token"

    @property
    def is_missing_credentials(self) -> bool:
        """No bearer credentials at all: RFC 6750 §3.1 wants a bare challenge."""
        return self in (BearerError.MISSING, BearerError.OTHER_SCHEME)


def bearer_token(values: Sequence[bytes]) -> str | BearerError:
    """The token of a request's ``Authorization`` header values (all of them,
    as received): ``Bearer``, one or more spaces, one b64token."""
    if not values:
        return BearerError.MISSING
    if len(values) > 1:
        return BearerError.REPEATED
    value = values[0].strip(b" \t")
    scheme, _, rest = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return BearerError.OTHER_SCHEME if _TCHARS.fullmatch(scheme) else BearerError.MALFORMED
    token = rest.lstrip(b" ")
    if not _B64TOKEN.fullmatch(token):
        return BearerError.MALFORMED
    return token.decode("ascii")


def _https_url(name: str, text: str, query: bool = False, fragment: bool = False) -> tuple[str, str]:
    """``(origin, rest)`` of an absolute https URL with a host, no user info and
    only characters a header may carry as they are; scheme and host lower-cased."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{name} is not an absolute https URL: {why}")

    if not text[:8].isascii() or text[:8].lower() != "https://":
        raise bad("the scheme must be https")
    after = text[8:]
    if not _URI_CHARS.fullmatch(after):
        raise bad("it has a character a URL cannot carry unencoded")
    if "#" in after and not fragment:
        raise bad("it has a fragment")
    end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    authority, rest = after[:end], after[end:]
    if "?" in rest.split("#")[0] and not query:
        raise bad("it has a query")
    if "@" in authority:
        raise bad("it has user information")
    if "[" in rest or "]" in rest:
        raise bad("it has a character a URL cannot carry unencoded")
    if authority.startswith("["):
        inside, closed, port = authority[1:].partition("]")
        if not closed:
            raise bad("its IPv6 literal is not closed")
        if not inside or not re.fullmatch(r"[0-9A-Fa-f:.]+", inside):
            raise bad("its IPv6 literal is not an address")
        host = authority[: len(inside) + 2]
    else:
        host, colon, port = authority.partition(":")
        port = colon + port
        if not _HOST.fullmatch(host):
            raise bad("its host is not a name or an address")
    if not host:
        raise bad("it has no host")
    if port.startswith(":"):
        digits = port[1:]
        if (
            not (1 <= len(digits) <= 5 and digits.isascii() and digits.isdigit())
            or not 0 < int(digits) < 65536
        ):
            raise bad("its port is not a number from 1 to 65535")
    elif port:
        raise bad("its host is not a name or an address")
    return f"https://{host.lower()}{port}", rest


@dataclass(frozen=True)
class Answer:
    """What to send back: status, ``WWW-Authenticate`` (when a challenge), JSON body."""

    status: int
    www_authenticate: str | None
    body: str


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string; anything but printable ASCII becomes ``?``
    (a CR or LF would end the header)."""
    out = "".join("\\" + c if c in '"\\' else c if " " <= c <= "~" else "?" for c in value)
    return f'"{out}"'


def _description(text: str) -> str:
    """RFC 6750 §3: ``error_description`` is printable ASCII without ``"`` or ``\\``."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text[:MAX_DESCRIPTION])


@dataclass(frozen=True)
class ProtectedResource:
    """One tool's protected resource metadata (RFC 9728): its resource URI,
    the issuers whose tokens it accepts (the Mayfly issuer), the scopes tokens
    for it carry. Built once at start; raises ValueError for a bad field."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()
    resource_name: str | None = None
    well_known_path: str = field(init=False)
    metadata_url: str = field(init=False)

    def __init__(
        self,
        resource: str,
        authorization_servers: Iterable[str],
        *,
        scopes_supported: Iterable[str] = (),
        resource_name: str | None = None,
    ) -> None:
        origin, path = _https_url("resource", resource)
        servers = tuple(
            "".join(_https_url(f"authorization_servers[{i}]", s)) for i, s in enumerate(authorization_servers)
        )
        if not servers:
            raise ValueError("authorization_servers is empty: name at least the Mayfly issuer")
        scopes = tuple(scopes_supported)
        for i, s in enumerate(scopes):
            action, sep, pattern = s.partition(":")
            try:
                if not sep:
                    raise RequiredScopeError("no ':' between action and resource")
                check_declared(pattern, action)
            except RequiredScopeError as e:
                raise ValueError(
                    f"scopes_supported[{i}] is not an <action>:<resource pattern> scope: {e}"
                ) from e
        if resource_name is not None and (
            not resource_name.strip() or any(unicodedata.category(c) == "Cc" for c in resource_name)
        ):
            raise ValueError("resource_name is empty or has control characters")
        # RFC 9728 §3.1: the suffix goes between the host and the path.
        well_known = WELL_KNOWN if path in ("", "/") else WELL_KNOWN + path
        for name, value in [
            ("resource", origin + path),
            ("authorization_servers", servers),
            ("scopes_supported", scopes),
            ("resource_name", resource_name),
            ("well_known_path", well_known),
            ("metadata_url", origin + well_known),
        ]:
            object.__setattr__(self, name, value)

    def metadata(self) -> dict[str, Any]:
        """The document (RFC 9728 §2): tokens in the header only, bound to the
        client certificate (RFC 8705 §3.4)."""
        doc: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": ["header"],
            "tls_client_certificate_bound_access_tokens": True,
        }
        if self.scopes_supported:
            doc["scopes_supported"] = list(self.scopes_supported)
        if self.resource_name is not None:
            doc["resource_name"] = self.resource_name
        return doc

    def answer_metadata(self) -> Answer:
        return Answer(200, None, json.dumps(self.metadata()))

    def answer_bearer_error(self, why: BearerError) -> Answer:
        """``401`` with a bare challenge for no bearer credentials (what starts
        an MCP client's discovery); ``400 invalid_request`` for a malformed or
        repeated header."""
        if why.is_missing_credentials:
            return self._answer(401, None, "a bearer token is required")
        return self._answer(400, "invalid_request", why.value)

    def answer_refused(self, refused: Refused) -> Answer:
        """``401 invalid_token``, ``403 insufficient_scope`` with the scope
        needed, or ``503`` without a challenge when the verifier is stale."""
        scope = refused.required.claim if refused.required is not None else None
        return self._answer(refused.status or 401, refused.error, refused.description, scope)

    def answer(self, status: int, error: str, description: str) -> Answer:
        """Another refusal in the same shape (``invalid_request``, …)."""
        return self._answer(status, error, description)

    def _answer(self, status: int, error: str | None, description: str, scope: str | None = None) -> Answer:
        text = _description(description)
        body: dict[str, str] = {}
        params: list[tuple[str, str]] = []
        if error is not None:
            body["error"] = error
            # RFC 6750 §3.1: no error information when no credentials were sent.
            params += [("error", error), ("error_description", text)]
        body["error_description"] = text
        if scope is not None:
            body["scope"] = scope
            params.append(("scope", scope))
        params.append(("resource_metadata", self.metadata_url))
        challenge = "Bearer " + ", ".join(f"{n}={_quoted(v)}" for n, v in params)
        return Answer(status, None if status == 503 else challenge, json.dumps(body))


__all__ = ["CONTENT_TYPE", "WELL_KNOWN", "Answer", "BearerError", "ProtectedResource", "bearer_token"]
