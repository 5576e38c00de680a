-- The same indexes as PostgreSQL's migration 20261201000001, for the admin and
-- audit queries.
CREATE INDEX tokens_task_issued_idx ON tokens (task_id, issued_at DESC, jti);
CREATE INDEX tokens_active_issued_idx ON tokens (issued_at DESC, jti) WHERE revoked_at IS NULL;
CREATE INDEX tokens_access_idx ON tokens (audience, agent, resource, issued_at);
CREATE INDEX audit_actor_seq_idx ON audit_events (actor, seq);
CREATE INDEX audit_agent_seq_idx ON audit_events (agent, seq);
CREATE INDEX audit_task_seq_idx ON audit_events (task_id, seq);
