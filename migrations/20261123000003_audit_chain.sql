-- Tamper-evident audit trail. Every event carries its position in one chain (seq),
-- the hash of the event before it and its own hash over a canonical encoding, so
-- editing, deleting or reordering a stored event is detected (`mayfly audit verify`).
--
-- Events are sealed into the chain at commit, by a deferred trigger that takes the
-- chain's head row: sealing is the last lock any transaction takes, so it cannot
-- deadlock with the others, and brokers on every replica write one chain in commit
-- order.

ALTER TABLE audit_events ADD COLUMN seq bigint;
ALTER TABLE audit_events ADD COLUMN prev_hash bytea;
ALTER TABLE audit_events ADD COLUMN hash bytea;

CREATE TABLE audit_chain (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq  bigint NOT NULL,
    last_hash bytea NOT NULL
);
INSERT INTO audit_chain (id, last_seq, last_hash)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- One field of the canonical encoding: its UTF-8 length (8 bytes, big-endian) and
-- bytes, or eight 0xff bytes for NULL.
CREATE FUNCTION mayfly_audit_field(v text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL THEN '\xffffffffffffffff'::bytea
           ELSE int8send(octet_length(convert_to(v, 'UTF8'))::bigint) || convert_to(v, 'UTF8') END
$$;

-- SHA-256 over "mayfly-audit-v1", the position, the previous hash, the time in
-- Unix microseconds, then actor, action, outcome, task, agent, jti, reason and the
-- detail's jsonb text, each as a field. src/audit/chain.rs computes the same.
CREATE FUNCTION mayfly_audit_hash(
    seq bigint, prev bytea, at timestamptz, actor text, action text, outcome text,
    task_id uuid, agent text, jti uuid, reason text, detail jsonb
) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(
        convert_to('mayfly-audit-v1', 'UTF8') || int8send(seq) || prev
        || int8send((extract(epoch FROM at) * 1000000)::bigint)
        || mayfly_audit_field(actor) || mayfly_audit_field(action)
        || mayfly_audit_field(outcome) || mayfly_audit_field(task_id::text)
        || mayfly_audit_field(agent) || mayfly_audit_field(jti::text)
        || mayfly_audit_field(reason) || mayfly_audit_field(detail::text))
$$;

-- Events written before the chain existed are sealed first, in the order written.
DO $$
DECLARE
    r record;
    s bigint := 0;
    p bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    h bytea;
BEGIN
    FOR r IN SELECT * FROM audit_events ORDER BY id LOOP
        s := s + 1;
        h := mayfly_audit_hash(s, p, r.at, r.actor, r.action, r.outcome, r.task_id,
                               r.agent, r.jti, r.reason, r.detail);
        UPDATE audit_events SET seq = s, prev_hash = p, hash = h WHERE id = r.id;
        p := h;
    END LOOP;
    UPDATE audit_chain SET last_seq = s, last_hash = p;
END $$;

CREATE UNIQUE INDEX audit_events_seq_idx ON audit_events (seq);

CREATE FUNCTION mayfly_audit_seal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
    p bytea;
    h bytea;
    e audit_events%ROWTYPE;
BEGIN
    SELECT * INTO e FROM audit_events WHERE id = NEW.id;
    UPDATE audit_chain SET last_seq = last_seq + 1 RETURNING last_seq, last_hash INTO s, p;
    h := mayfly_audit_hash(s, p, e.at, e.actor, e.action, e.outcome, e.task_id, e.agent,
                           e.jti, e.reason, e.detail);
    UPDATE audit_chain SET last_hash = h;
    UPDATE audit_events SET seq = s, prev_hash = p, hash = h WHERE id = NEW.id;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER audit_events_seal AFTER INSERT ON audit_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mayfly_audit_seal();

-- Append-only: an event is never updated (but by its sealing) nor deleted. The
-- tables' owner can get past this, and an owner can also rewrite the whole chain
-- consistently: verify against a checkpoint (a head hash recorded outside the
-- database) to catch that, and run the broker under a role that does not own them.
CREATE FUNCTION mayfly_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Only the sealing itself, an update from within the seal trigger, of an
    -- event not yet sealed.
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 AND OLD.seq IS NULL THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit events are append-only';
END $$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION mayfly_audit_append_only();

CREATE FUNCTION mayfly_audit_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END $$;

CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_audit_no_truncate();

-- The head moves only by sealing.
CREATE FUNCTION mayfly_audit_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit chain head moves only by sealing';
END $$;

CREATE TRIGGER audit_chain_guard BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION mayfly_audit_head_guard();
