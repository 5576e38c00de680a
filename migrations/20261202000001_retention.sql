-- Pruning (src/store/sql/retention.rs) finds what stopped mattering by time, and
-- deleting a token looks up every row that references it: an index for each.
CREATE INDEX tokens_expiry_idx ON tokens (expires_at, depth DESC);
CREATE INDEX delegations_parent_idx ON delegations (parent_jti);
CREATE INDEX delegations_child_idx ON delegations (child_jti) WHERE child_jti IS NOT NULL;
CREATE INDEX delegations_lapse_idx ON delegations (expires_at) WHERE redeemed_at IS NULL;
CREATE INDEX approvals_used_idx ON approvals (used_jti) WHERE used_jti IS NOT NULL;
CREATE INDEX approvals_lapse_idx ON approvals (expires_at) WHERE state <> 'used';
CREATE INDEX tasks_ended_idx ON tasks (ended_at) WHERE state <> 'active';
CREATE INDEX revocations_at_idx ON revocations (at, seq);

-- Each of these leads an index made since, which serves every query it served:
-- one index fewer for each token and audit event written.
DROP INDEX tokens_task_idx;
DROP INDEX audit_task_idx;
