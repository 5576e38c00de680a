"""What a request needs, one action on one concrete resource, and the broker's
coverage rule that decides whether a token's ``scope`` claim grants it.

A port of ``src/domain/scope.rs`` and ``src/verifier/scope.rs``: the same
characters, the same segment rules, the same answers, so that a Python tool
accepts exactly what a Rust one does.
"""

from __future__ import annotations

import string

_ALNUM = frozenset(string.ascii_letters + string.digits)
MAX_AUDIENCE = 128
MAX_ACTION = 64
MAX_RESOURCE = 512


class RequiredScopeError(ValueError):
    """A required scope (or an advertised one) that the broker's rules refuse;
    the message names the field, never more than a short part of the value."""


def _check_chars(field: str, s: str, max_len: int, extra: str) -> None:
    if not s:
        raise RequiredScopeError(f"{field} is empty")
    if len(s.encode()) > max_len:
        raise RequiredScopeError(f"{field} is longer than {max_len} bytes")
    for ch in s:
        if not (ch in _ALNUM or ch in "-_." or ch in extra):
            raise RequiredScopeError(f"{field} contains a character that is not allowed: {ch!r}")


def check_declared(resource: str, action: str) -> None:
    """Raises unless ``(resource, action)`` is a declared scope by the broker's
    rule (wildcards allowed): ``Scope::declared`` without the audience."""
    _check_chars("resource", resource, MAX_RESOURCE, "/*:@+=,")
    if action != "*":
        _check_chars("action", action, MAX_ACTION, "")
    segments = resource.split("/")
    for i, seg in enumerate(segments):
        if not seg:
            raise RequiredScopeError("resource has an empty path segment")
        # A server that normalises paths would read `a/../b` as `b`: refused.
        if seg in (".", ".."):
            raise RequiredScopeError(f"resource has a {seg!r} path segment; name the resource directly")
        if "*" in seg and seg not in ("*", "**"):
            raise RequiredScopeError(
                "resource mixes '*' with other characters; a wildcard is a whole segment"
            )
        if seg == "**" and i + 1 != len(segments):
            raise RequiredScopeError("resource may use '**' only as its last segment")


def _pattern_covers(outer: str, inner: str) -> bool:
    """Segment-wise coverage: ``*`` is one segment, a trailing ``**`` one or more."""
    o_segs, i_segs = outer.split("/"), inner.split("/")
    for i, o in enumerate(o_segs):
        if o == "**":
            return len(i_segs) > i
        if i >= len(i_segs):
            return False
        n = i_segs[i]
        if not (n != "**" if o == "*" else n == o):
            return False
    return len(i_segs) == len(o_segs)


class RequiredScope:
    """The action and concrete resource a request needs, e.g. ``read`` on
    ``customers/eu/42`` (the audience is checked on its own, as ``aud``).

    Raises :class:`RequiredScopeError` for what the broker would refuse as a
    mint request, and for a pattern (``*``, ``**``): a request names one
    resource, never a set of them.
    """

    __slots__ = ("action", "resource")

    def __init__(self, action: str, resource: str) -> None:
        check_declared(resource, action)
        if action == "*":
            raise RequiredScopeError("action must name one action, not '*'")
        if any(s in ("*", "**") for s in resource.split("/")):
            raise RequiredScopeError(
                "resource must name one concrete resource, not a pattern with '*' or '**'"
            )
        self.action = action
        self.resource = resource

    @property
    def claim(self) -> str:
        """As a ``scope`` claim (and an ``insufficient_scope`` challenge) spells it."""
        return f"{self.action}:{self.resource}"

    def is_covered_by(self, claim: str) -> bool:
        """True when a token's ``scope`` claim (``<action>:<pattern>``) covers
        this action on this resource."""
        action, sep, pattern = claim.partition(":")
        if not sep:
            return False
        return (action == "*" or action == self.action) and _pattern_covers(pattern, self.resource)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequiredScope) and (self.action, self.resource) == (
            other.action,
            other.resource,
        )

    def __hash__(self) -> int:
        return hash((self.action, self.resource))

    def __repr__(self) -> str:
        return f"RequiredScope({self.action!r}, {self.resource!r})"
