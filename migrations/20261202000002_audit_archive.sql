-- Archiving the audit trail: the oldest sealed events are exported (verifiable
-- offline against a checkpoint) and then removed, the chain anchored at the last
-- of them. audit_anchor holds the position and hash of the last event archived;
-- the stored chain starts after it, and `mayfly audit verify` verifies from it.

CREATE TABLE audit_anchor (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL CHECK (seq >= 0),
    hash bytea NOT NULL
);
INSERT INTO audit_anchor (id, seq, hash)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- The anchor moves only forward, never past the chain's head, and only to a
-- sealed event with exactly the hash it names; it is never deleted.
CREATE FUNCTION mayfly_audit_anchor_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id AND NEW.seq > OLD.seq
       AND NEW.seq <= (SELECT last_seq FROM audit_chain)
       AND EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit anchor moves only forward, to a sealed event with its hash';
END $$;

CREATE TRIGGER audit_anchor_guard BEFORE UPDATE OR DELETE ON audit_anchor
    FOR EACH ROW EXECUTE FUNCTION mayfly_audit_anchor_guard();

CREATE FUNCTION mayfly_audit_anchor_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit anchor moves only forward, to a sealed event with its hash';
END $$;

CREATE TRIGGER audit_anchor_no_truncate BEFORE TRUNCATE ON audit_anchor
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_audit_anchor_no_truncate();

-- Append-only, but for archived events: an event is never updated (but by its
-- sealing) nor deleted, unless it is sealed at or below the anchor, i.e. was
-- exported and anchored first. (Truncating stays refused.)
CREATE OR REPLACE FUNCTION mayfly_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Only sealing: setting the chain columns of an event not yet sealed, and
    -- nothing else. (A wrong seal does not verify.)
    IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND (NEW.id, NEW.at, NEW.actor, NEW.action, NEW.outcome, NEW.task_id, NEW.agent,
            NEW.jti, NEW.reason, NEW.detail)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.actor, OLD.action, OLD.outcome, OLD.task_id, OLD.agent,
            OLD.jti, OLD.reason, OLD.detail) THEN
        RETURN NEW;
    END IF;
    -- Only archived events: sealed at or below the anchor.
    IF TG_OP = 'DELETE' AND OLD.seq IS NOT NULL
       AND OLD.seq <= (SELECT seq FROM audit_anchor) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only';
END $$;
