-- Delegation (RFC 8693): a token may descend from another token of the same task,
-- held by a sub-agent. Revoking a token or an agent revokes every descendant.
ALTER TABLE tokens ADD COLUMN parent_jti uuid REFERENCES tokens (jti);
ALTER TABLE tokens ADD COLUMN depth integer NOT NULL DEFAULT 0 CHECK (depth >= 0);
ALTER TABLE tokens ADD CONSTRAINT tokens_parent_depth_check
    CHECK ((parent_jti IS NULL) = (depth = 0));
CREATE INDEX tokens_parent_idx ON tokens (parent_jti) WHERE parent_jti IS NOT NULL;

-- An offer from a token's holder to a named sub-agent, redeemable once by it.
CREATE TABLE delegations (
    id          uuid PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks (id),
    parent_jti  uuid NOT NULL REFERENCES tokens (jti),
    delegator   text NOT NULL,
    sub_agent   text NOT NULL,
    audience    text NOT NULL,
    resource    text NOT NULL,
    action      text NOT NULL,
    depth       integer NOT NULL CHECK (depth >= 1),
    act         jsonb NOT NULL,
    ancestors   jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    redeemed_at timestamptz,
    child_jti   uuid REFERENCES tokens (jti),
    CHECK ((redeemed_at IS NULL) = (child_jti IS NULL))
);
CREATE INDEX delegations_task_idx ON delegations (task_id);

-- Step-up approvals: a mint of a high-impact action waits for a security-team
-- decision. One approval is good for one token.
CREATE TABLE approvals (
    id              uuid PRIMARY KEY,
    task_id         uuid NOT NULL REFERENCES tasks (id),
    requester       text NOT NULL,
    workflow        text NOT NULL,
    objective       text NOT NULL,
    audience        text NOT NULL,
    resource        text NOT NULL,
    action          text NOT NULL,
    ttl_seconds     bigint NOT NULL CHECK (ttl_seconds > 0),
    state           text NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'used')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    decided_by      text,
    decided_at      timestamptz,
    decision_reason text,
    used_jti        uuid REFERENCES tokens (jti),
    CHECK ((state = 'pending') = (decided_by IS NULL)),
    CHECK ((state = 'used') = (used_jti IS NOT NULL))
);
CREATE INDEX approvals_task_idx ON approvals (task_id);
CREATE INDEX approvals_pending_idx ON approvals (expires_at) WHERE state = 'pending';

-- Step-up requests refused because an approval for the same action was pending
-- or denied: more than the workflow allows is a deviation.
ALTER TABLE tasks ADD COLUMN step_up_refusals integer NOT NULL DEFAULT 0
    CHECK (step_up_refusals >= 0);
