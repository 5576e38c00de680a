-- Indexes for the admin and audit queries, each as the query reads it (the store
-- names only the filters given, so each can use its index):
-- ListTokens by task and active tokens, newest first; AuditAccess per agent and
-- resource of an audience (read from the index alone); QueryAudit by (actor) or
-- about (agent) an agent, and by task, in chain order.
CREATE INDEX tokens_task_issued_idx ON tokens (task_id, issued_at DESC, jti);
CREATE INDEX tokens_active_issued_idx ON tokens (issued_at DESC, jti) WHERE revoked_at IS NULL;
CREATE INDEX tokens_access_idx ON tokens (audience, agent, resource, issued_at);
CREATE INDEX audit_actor_seq_idx ON audit_events (actor, seq);
CREATE INDEX audit_agent_seq_idx ON audit_events (agent, seq);
CREATE INDEX audit_task_seq_idx ON audit_events (task_id, seq);
