-- Mayfly schema: tasks, tokens, revocation events (gap-free sequence), signing keys,
-- audit events.

CREATE TABLE tasks (
    id            uuid PRIMARY KEY,
    agent         text NOT NULL,
    workflow      text NOT NULL,
    objective     text NOT NULL,
    scopes        jsonb NOT NULL,
    state         text NOT NULL CHECK (state IN ('active', 'completed', 'expired', 'deviated', 'revoked')),
    opened_by     text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    end_reason    text,
    tokens_minted integer NOT NULL DEFAULT 0 CHECK (tokens_minted >= 0)
);
CREATE INDEX tasks_agent_created_idx ON tasks (agent, created_at DESC);
CREATE INDEX tasks_created_idx ON tasks (created_at DESC);
CREATE INDEX tasks_active_deadline_idx ON tasks (expires_at) WHERE state = 'active';

CREATE TABLE tokens (
    jti             uuid PRIMARY KEY,
    task_id         uuid NOT NULL REFERENCES tasks (id),
    agent           text NOT NULL,
    workflow        text NOT NULL,
    audience        text NOT NULL,
    resource        text NOT NULL,
    action          text NOT NULL,
    kid             text NOT NULL,
    cert_thumbprint text NOT NULL,
    issued_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revocation_seq  bigint
);
CREATE INDEX tokens_task_idx ON tokens (task_id);
CREATE INDEX tokens_agent_issued_idx ON tokens (agent, issued_at DESC);
CREATE INDEX tokens_issued_idx ON tokens (issued_at DESC);
CREATE INDEX tokens_unrevoked_idx ON tokens (expires_at) WHERE revoked_at IS NULL;

-- One row holding the last revocation sequence number. Taking its row lock inside
-- the revoking transaction serialises revokers, so sequence numbers are gap-free
-- (a rollback returns the number) and increase in commit order.
-- last_at keeps revocation times non-decreasing in sequence order.
CREATE TABLE revocation_counter (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq bigint NOT NULL,
    last_at  timestamptz NOT NULL
);
INSERT INTO revocation_counter (id, last_seq, last_at) VALUES (true, 0, '-infinity');

CREATE TABLE revocations (
    seq         bigint PRIMARY KEY,
    target_kind text NOT NULL CHECK (target_kind IN ('token', 'task', 'agent', 'all')),
    target      text NOT NULL,
    reason      text NOT NULL,
    actor       text NOT NULL,
    trigger     text NOT NULL,
    at          timestamptz NOT NULL
);

CREATE TABLE signing_keys (
    kid        text PRIMARY KEY,
    public_key bytea NOT NULL,
    created_at timestamptz NOT NULL,
    not_after  timestamptz NOT NULL
);

CREATE TABLE audit_events (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    outcome text NOT NULL,
    task_id uuid,
    agent   text,
    jti     uuid,
    reason  text,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_task_idx ON audit_events (task_id);
CREATE INDEX audit_agent_at_idx ON audit_events (agent, at);
