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

-- Revocation events were append-only; now the pruner deletes them, once older
-- than any token they concern lives. The database holds that line itself, by
-- its own clock: a role that may delete (the brokers') deletes an event only
-- once it is older than 25 hours (the longest token, 24 h, and a margin) and
-- never the last one, and nobody truncates the table.
CREATE FUNCTION mayfly_revocation_prune_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.at < now() - interval '25 hours'
       AND OLD.seq < (SELECT last_seq FROM revocation_counter) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'revocation event % is kept: only events older than 25 hours, and never the last, are pruned', OLD.seq;
END $$;

CREATE TRIGGER revocations_prune_guard BEFORE DELETE ON revocations
    FOR EACH ROW EXECUTE FUNCTION mayfly_revocation_prune_guard();

CREATE FUNCTION mayfly_revocation_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'revocation events are pruned one by one, never truncated';
END $$;

CREATE TRIGGER revocations_no_truncate BEFORE TRUNCATE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_revocation_no_truncate();
