-- Tamper-evident audit trail. Every event carries its position in one chain (seq),
-- the hash of the event before it and its own hash over a canonical encoding, so
-- editing, deleting or reordering a stored event is detected (`mayfly audit verify`).
--
-- Events are sealed into the chain moments after they commit, in batches, by
-- mayfly_audit_seal (which every broker runs continuously, and before verifying):
-- the transactions that write events never wait on the chain, and brokers on every
-- replica extend one chain, in the order events became visible.

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

CREATE UNIQUE INDEX audit_events_seq_idx ON audit_events (seq);
CREATE INDEX audit_events_unsealed_idx ON audit_events (id) WHERE seq IS NULL;

-- Seals up to `batch` committed, unsealed events into the chain, oldest first,
-- under the head row's lock; returns how many. Brokers call it continuously (and
-- before every verification), so an event is sealed moments after its transaction
-- commits; sealing in batches, apart from the transactions that write events,
-- keeps them from queueing on one lock.
CREATE FUNCTION mayfly_audit_seal(batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
    p bytea;
    h bytea;
    e audit_events%ROWTYPE;
    n integer := 0;
BEGIN
    SELECT last_seq, last_hash INTO s, p FROM audit_chain FOR UPDATE;
    FOR e IN SELECT * FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT batch LOOP
        s := s + 1;
        h := mayfly_audit_hash(s, p, e.at, e.actor, e.action, e.outcome, e.task_id,
                               e.agent, e.jti, e.reason, e.detail);
        UPDATE audit_events SET seq = s, prev_hash = p, hash = h WHERE id = e.id;
        p := h;
        n := n + 1;
    END LOOP;
    IF n > 0 THEN
        UPDATE audit_chain SET last_seq = s, last_hash = p;
    END IF;
    RETURN n;
END $$;

-- Append-only: an event is never updated (but by its sealing) nor deleted. The
-- tables' owner can get past this, and an owner can also rewrite the whole chain
-- consistently: verify against a checkpoint (a head hash recorded outside the
-- database) to catch that, and run the broker under a role that does not own them.
CREATE FUNCTION mayfly_audit_append_only() RETURNS trigger
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

-- The head moves only forward, as sealing moves it.
CREATE FUNCTION mayfly_audit_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.last_seq > OLD.last_seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit chain head moves only by sealing';
END $$;

CREATE TRIGGER audit_chain_guard BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION mayfly_audit_head_guard();

-- Events written before the chain existed are sealed first, in the order written.
SELECT mayfly_audit_seal(2147483647);
