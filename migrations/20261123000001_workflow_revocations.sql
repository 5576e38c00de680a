-- Revocations may target a workflow: every token of its tasks.
ALTER TABLE revocations DROP CONSTRAINT revocations_target_kind_check;
ALTER TABLE revocations ADD CONSTRAINT revocations_target_kind_check
    CHECK (target_kind IN ('token', 'task', 'agent', 'workflow', 'all'));
