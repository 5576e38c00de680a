-- Mayfly schema for the embedded SQLite store: the same tables as PostgreSQL's
-- (migrations/), in one migration. Times are Unix microseconds (INTEGER), UUIDs
-- their hyphenated lower-case text, JSON its text. One broker process owns the
-- database file (the store holds a lock file), and every write goes through its
-- one writing connection, so transactions never interleave.

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    agent            TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    objective        TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active', 'completed', 'expired', 'deviated', 'revoked')),
    opened_by        TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    ended_at         INTEGER,
    end_reason       TEXT,
    tokens_minted    INTEGER NOT NULL DEFAULT 0 CHECK (tokens_minted >= 0),
    step_up_refusals INTEGER NOT NULL DEFAULT 0 CHECK (step_up_refusals >= 0)
) STRICT;
CREATE INDEX tasks_agent_created_idx ON tasks (agent, created_at DESC);
CREATE INDEX tasks_created_idx ON tasks (created_at DESC);
CREATE INDEX tasks_active_deadline_idx ON tasks (expires_at) WHERE state = 'active';

CREATE TABLE tokens (
    jti             TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL REFERENCES tasks (id),
    agent           TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    audience        TEXT NOT NULL,
    resource        TEXT NOT NULL,
    action          TEXT NOT NULL,
    kid             TEXT NOT NULL,
    cert_thumbprint TEXT NOT NULL,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    revoked_at      INTEGER,
    revocation_seq  INTEGER,
    parent_jti      TEXT REFERENCES tokens (jti),
    depth           INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
    CHECK ((parent_jti IS NULL) = (depth = 0))
) STRICT;
CREATE INDEX tokens_task_idx ON tokens (task_id);
CREATE INDEX tokens_agent_issued_idx ON tokens (agent, issued_at DESC);
CREATE INDEX tokens_issued_idx ON tokens (issued_at DESC);
CREATE INDEX tokens_audience_idx ON tokens (audience, issued_at);
CREATE INDEX tokens_parent_idx ON tokens (parent_jti) WHERE parent_jti IS NOT NULL;

-- The last revocation sequence number and time: gap-free, in commit order.
CREATE TABLE revocation_counter (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    last_at  INTEGER NOT NULL
) STRICT;
INSERT INTO revocation_counter (id, last_seq, last_at) VALUES (1, 0, -9223372036854775808);

CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('token', 'task', 'agent', 'workflow', 'all')),
    target      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    at          INTEGER NOT NULL
) STRICT;

CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    not_after  INTEGER NOT NULL
) STRICT;

CREATE TABLE delegations (
    id          TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    parent_jti  TEXT NOT NULL REFERENCES tokens (jti),
    delegator   TEXT NOT NULL,
    sub_agent   TEXT NOT NULL,
    audience    TEXT NOT NULL,
    resource    TEXT NOT NULL,
    action      TEXT NOT NULL,
    depth       INTEGER NOT NULL CHECK (depth >= 1),
    act         TEXT NOT NULL,
    ancestors   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    redeemed_at INTEGER,
    child_jti   TEXT REFERENCES tokens (jti),
    CHECK ((redeemed_at IS NULL) = (child_jti IS NULL))
) STRICT;
CREATE INDEX delegations_task_idx ON delegations (task_id);
CREATE INDEX delegations_parent_idx ON delegations (parent_jti);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL REFERENCES tasks (id),
    requester       TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    objective       TEXT NOT NULL,
    audience        TEXT NOT NULL,
    resource        TEXT NOT NULL,
    action          TEXT NOT NULL,
    ttl_seconds     INTEGER NOT NULL CHECK (ttl_seconds > 0),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'used')),
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    decided_by      TEXT,
    decided_at      INTEGER,
    decision_reason TEXT,
    used_jti        TEXT REFERENCES tokens (jti),
    CHECK ((state = 'pending') = (decided_by IS NULL)),
    CHECK ((state = 'used') = (used_jti IS NOT NULL))
) STRICT;
CREATE INDEX approvals_task_idx ON approvals (task_id);

CREATE TABLE freezes (
    kind   TEXT NOT NULL CHECK (kind IN ('agent', 'workflow', 'all')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor  TEXT NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (kind, target),
    CHECK ((kind = 'all') = (target = ''))
) STRICT;

-- The audit trail, hash-chained as in PostgreSQL: the store seals committed events
-- in batches (seq, prev_hash, hash; src/audit/chain.rs computes the hash).
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    task_id   TEXT,
    agent     TEXT,
    jti       TEXT,
    reason    TEXT,
    detail    TEXT NOT NULL DEFAULT '{}',
    seq       INTEGER UNIQUE,
    prev_hash BLOB,
    hash      BLOB
) STRICT;
CREATE INDEX audit_task_idx ON audit_events (task_id);
CREATE INDEX audit_agent_at_idx ON audit_events (agent, at);
CREATE INDEX audit_unsealed_idx ON audit_events (id) WHERE seq IS NULL;

CREATE TABLE audit_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL,
    last_hash BLOB NOT NULL
) STRICT;
INSERT INTO audit_chain (id, last_seq, last_hash) VALUES (1, 0, zeroblob(32));

-- Append-only: an event changes only when it is sealed (its chain columns set
-- once, nothing else), and is never deleted. Whoever can write the file can drop
-- these triggers; verify against a checkpoint to catch a rewritten chain.
CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
WHEN NOT (OLD.seq IS NULL AND NEW.seq IS NOT NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.actor IS OLD.actor
          AND NEW.action IS OLD.action AND NEW.outcome IS OLD.outcome
          AND NEW.task_id IS OLD.task_id AND NEW.agent IS OLD.agent AND NEW.jti IS OLD.jti
          AND NEW.reason IS OLD.reason AND NEW.detail IS OLD.detail)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

-- The head moves only forward, as sealing moves it.
CREATE TRIGGER audit_chain_forward BEFORE UPDATE ON audit_chain
WHEN NOT (NEW.last_seq > OLD.last_seq)
BEGIN
    SELECT RAISE(ABORT, 'the audit chain head moves only by sealing');
END;

CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN
    SELECT RAISE(ABORT, 'the audit chain head moves only by sealing');
END;
