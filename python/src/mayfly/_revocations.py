"""The local revocation set and the state of the revocation feed that fills it,
ported from ``src/verifier/revocations.rs`` and ``watch.rs``: each event
applied once and in order, each entry kept only while a token it could concern
can still be presented, and "fresh" only once the broker said the history is
replayed (a heartbeat) and only while it keeps talking.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._token import Claims

log = logging.getLogger("mayfly.verifier")

#: The kinds of target an event names, as the feed spells them.
TOKEN, TASK, AGENT, WORKFLOW, ALL = "token", "task", "agent", "workflow", "all"

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def unix_seconds(text: str) -> int | None:
    """The whole Unix seconds (floored) of an RFC 3339 time, or None."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if m.group(7) is None:
        offset = int(m.group(9)) * 3600 + int(m.group(10)) * 60
        t -= offset if m.group(8) == "+" else -offset
    return t


@dataclass(frozen=True)
class Revocation:
    """One event: its sequence, target kind and value, and when (Unix seconds)."""

    sequence: int
    kind: str
    value: str
    at: int


class _Entry:
    __slots__ = ("at", "prune_at", "sequence")

    def __init__(self, sequence: int, at: int, prune_at: int) -> None:
        self.sequence, self.at, self.prune_at = sequence, at, prune_at


class RevocationSet:
    """Revoked tokens, tasks, agents, workflows and "all", looked up per check
    without I/O; safe to read from any thread while the feed writes."""

    def __init__(self, max_token_lifetime: int, leeway: int, skew: int) -> None:
        self._maps: dict[str, dict[str, _Entry]] = {TOKEN: {}, TASK: {}, AGENT: {}, WORKFLOW: {}}
        self._all: _Entry | None = None
        # An entry is kept this long after its event: a token issued at the
        # event (within the skew) lives at most this long, leeway included.
        self._keep = max_token_lifetime + leeway + skew
        self._skew = skew
        self._lock = threading.Lock()

    def apply(self, r: Revocation, now: int) -> bool:
        """Records an event; one whose tokens have all expired by ``now`` (old
        history replayed) is not kept. Returns whether it was."""
        new = _Entry(r.sequence, r.at, r.at + self._keep)
        if new.prune_at <= now:
            return False
        with self._lock:
            if r.kind == ALL:
                if self._all is None or self._all.at < new.at:
                    self._all = new
                return True
            kept = self._maps[r.kind].setdefault(r.value, new)
            if r.kind in (TOKEN, TASK):
                # The first sequence stays; the entry lives as long as the later asks.
                if new.prune_at > kept.prune_at:
                    kept.prune_at, kept.at = new.prune_at, new.at
            elif new.at > kept.at:
                # A later agent or workflow event covers all an earlier one did.
                self._maps[r.kind][r.value] = new
        return True

    def revoked(self, c: Claims) -> int | None:
        """The sequence of an event that revokes the token, if any."""
        tokens, agents = self._maps[TOKEN], self._maps[AGENT]
        with self._lock:
            e = tokens.get(c.jti)
            if e is None:
                # A delegated token dies with every token it descends from.
                e = next((tokens[j] for j in c.ancestors if j in tokens), None)
            if e is None:
                e = self._maps[TASK].get(c.task)
            if e is not None:
                return e.sequence
            # Agent, workflow and "all" events revoke what was issued up to them.
            limit = c.iat - self._skew
            e = agents.get(c.sub)
            if e is not None and limit <= e.at:
                return e.sequence
            for a in c.actors():
                e = agents.get(a)
                if e is not None and limit <= e.at:
                    return e.sequence
            e = self._maps[WORKFLOW].get(c.wf)
            if e is not None and limit <= e.at:
                return e.sequence
            if self._all is not None and limit <= self._all.at:
                return self._all.sequence
            return None

    def prune(self, now: int) -> None:
        """Forgets every entry whose tokens have all expired by ``now``."""
        with self._lock:
            for kind, m in self._maps.items():
                self._maps[kind] = {k: e for k, e in m.items() if e.prune_at > now}
            if self._all is not None and self._all.prune_at <= now:
                self._all = None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._maps.values()) + (self._all is not None)


class OutOfStep(Exception):
    """The feed cannot be followed further: reopen from the cursor, or (``resync``)
    from the start because the broker's history no longer holds what was applied."""

    def __init__(self, why: str, *, resync: bool = False) -> None:
        super().__init__(why)
        self.resync = resync


def _revocation(doc: Any, now: int) -> Revocation:
    """An event's data as the set keeps it. A target this library does not know
    is applied as "all": refusing too much until it is pruned beats ignoring it."""
    seq = doc.get("sequence") if isinstance(doc, dict) else None
    if type(seq) is not int or seq < 1:
        raise OutOfStep("a revocation event without a sequence")
    target = doc.get("target")
    kind, value = ALL, ""
    if isinstance(target, dict) and len(target) == 1:
        ((k, v),) = target.items()
        if k in (TOKEN, TASK, AGENT, WORKFLOW) and isinstance(v, str):
            kind, value = k, v
        elif k != ALL or v is not True:
            log.error("revocation event %d has a target this verifier does not know; applied as 'all'", seq)
    else:
        log.error("revocation event %d has no target this verifier knows; applied as 'all'", seq)
    # Without a time, "now" covers at least every token issued before it.
    at = doc.get("at")
    seconds = unix_seconds(at) if isinstance(at, str) else None
    return Revocation(seq, kind, value, now if seconds is None else seconds)


class FeedState:
    """What the feed writes and checks read: the set, the cursor (and its event's
    time, sent back on reconnect so the broker can tell it is still the same
    event), when the broker was last heard, and whether the history is replayed."""

    def __init__(self, revocations: RevocationSet, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.revocations = revocations
        self.cursor = 0
        self.cursor_at: str | None = None
        self._monotonic = monotonic
        self._heard: float | None = None
        self._synced = threading.Event()
        #: Called (on the feed's thread) whenever ``synced`` changes.
        self.on_change: Callable[[bool], None] | None = None

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def _set_synced(self, value: bool) -> None:
        if value != self._synced.is_set():
            (self._synced.set if value else self._synced.clear)()
            if self.on_change is not None:
                self.on_change(value)

    def is_fresh(self, staleness: float) -> bool:
        """Caught up since the last (re)sync, and heard from within ``staleness``."""
        heard = self._heard
        return heard is not None and self._synced.is_set() and self._monotonic() - heard <= staleness

    def heard_now(self) -> None:
        self._heard = self._monotonic()

    def resync(self) -> None:
        """The broker's history is not the one the set was built from: stale
        until it is replayed from sequence 0. The entries already kept stay
        until they expire: they only ever refuse tokens, so a revocation that a
        restore lost stays in force here."""
        self._set_synced(False)
        self.cursor_at = None
        self.cursor = 0

    def handle(self, event: str, data: str, now: int) -> None:
        """Applies one message of the feed; raises :class:`OutOfStep` when the
        feed must be reopened (or resynced)."""
        if event == "revocation":
            doc = _json(data)
            r = _revocation(doc, now)
            if r.sequence <= self.cursor:
                self.heard_now()  # already applied (a replay): never twice
                return
            if self.cursor and r.sequence != self.cursor + 1:
                log.warning("revocation feed skipped from %d to %d", self.cursor, r.sequence)
            self.revocations.apply(r, now)
            at = doc.get("at")
            # The cursor moves only once the event is in the set.
            self.cursor_at = at if isinstance(at, str) else None
            self.cursor = r.sequence
            self.heard_now()
        elif event == "heartbeat":
            doc = _json(data)
            head = doc.get("head") if isinstance(doc, dict) else None
            if type(head) is not int or head < 0:
                raise OutOfStep("a heartbeat without a head")
            if head > self.cursor:
                raise OutOfStep(f"heartbeat at {head} but the last event received is {self.cursor}")
            if head < self.cursor:
                raise OutOfStep(
                    f"heartbeat at {head} but the last event applied is {self.cursor}", resync=True
                )
            self.heard_now()
            self._set_synced(True)
        elif event == "resync":
            doc = _json(data)
            why = doc.get("error_description") if isinstance(doc, dict) else None
            raise OutOfStep(str(why)[:200] if why else "the broker asked for a resync", resync=True)
        elif event == "error":
            doc = _json(data)
            why = doc.get("error_description") if isinstance(doc, dict) else None
            raise OutOfStep(f"the feed ended: {str(why)[:200]}")
        else:
            self.heard_now()  # a kind newer than this library: the broker is alive


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise OutOfStep("a feed message is not JSON") from e
