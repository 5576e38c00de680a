-- Audit events written sealed. An event takes its position in the chain (seq),
-- the previous event's hash and its own in the INSERT that writes it, inside the
-- transaction that writes it, as that transaction's last statement (the broker
-- holds a transaction's events back until just before its COMMIT). The head
-- row's lock, taken there, is held until the commit, so positions follow commit
-- order, a transaction rolled back takes none (the chain stays gap-free),
-- brokers on every replica extend one chain, and an event is tamper-evident
-- from its commit. There is no second write per event, and no window before
-- sealing.
--
-- The price: transactions that write events serialize on the head, across
-- every replica, for the length of their commit. Taking it as the last lock of
-- the transaction keeps that short and cannot deadlock: a transaction that
-- holds the head waits on no other row.
--
-- mayfly_audit_seal (20261123000003) stays, for events that arrive with no
-- position (written by an older broker during a rolling upgrade, or by a write
-- that does not seal its own yet): it takes the same lock, so it and the sealed
-- writes interleave, each event after every one sealed before it. The
-- append-only trigger restricts updates and deletes only: sealed inserts pass
-- it, and a wrong seal does not verify.

-- Appends events sealed, in the order given, after the chain's head; returns
-- how many. Its arguments are the events' columns, one array each, all of one
-- length, so the statement is the same for any number of events (prepared
-- once). Each hash is mayfly_audit_hash's over the values as stored (the
-- jsonb's text, the uuid's text): what `mayfly audit verify` reads back. (Not a
-- call of mayfly_audit_hash per event: from PL/pgSQL, PostgreSQL plans a SQL
-- function's body again at every call, about half a millisecond an event on a
-- small machine; written out, the whole batch costs less than that.)
CREATE FUNCTION mayfly_audit_append(
    at timestamptz[], actor text[], action text[], outcome text[], task_id uuid[],
    agent text[], jti uuid[], reason text[], detail jsonb[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(mayfly_audit_append.at), 0);
    s bigint;
    p bytea;
    prevs bytea[] := '{}';
    hashes bytea[] := '{}';
    bodies bytea[];
BEGIN
    IF n = 0 THEN
        RETURN 0;
    END IF;
    -- unnest pads a short array with NULLs: a column missing a value would be
    -- stored (and hashed) as NULL rather than refused.
    IF cardinality(mayfly_audit_append.actor) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.action) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.outcome) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.task_id) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.agent) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.jti) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.reason) IS DISTINCT FROM n
       OR cardinality(mayfly_audit_append.detail) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'mayfly_audit_append: % events, but columns of other lengths', n;
    END IF;
    -- Each event's encoding after its position and the previous hash (as
    -- mayfly_audit_hash's, each field as mayfly_audit_field encodes it, written
    -- out: a SQL function called per row costs far more than its expression),
    -- in one query over the columns; the loop below then only chains.
    SELECT array_agg(
               int8send((extract(epoch FROM e.at) * 1000000)::bigint)
               || (CASE WHEN e.actor IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.actor, 'UTF8'))::bigint) || convert_to(e.actor, 'UTF8') END)
               || (CASE WHEN e.action IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.action, 'UTF8'))::bigint) || convert_to(e.action, 'UTF8') END)
               || (CASE WHEN e.outcome IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.outcome, 'UTF8'))::bigint) || convert_to(e.outcome, 'UTF8') END)
               || (CASE WHEN e.task_id::text IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.task_id::text, 'UTF8'))::bigint) || convert_to(e.task_id::text, 'UTF8') END)
               || (CASE WHEN e.agent IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.agent, 'UTF8'))::bigint) || convert_to(e.agent, 'UTF8') END)
               || (CASE WHEN e.jti::text IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.jti::text, 'UTF8'))::bigint) || convert_to(e.jti::text, 'UTF8') END)
               || (CASE WHEN e.reason IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.reason, 'UTF8'))::bigint) || convert_to(e.reason, 'UTF8') END)
               || (CASE WHEN e.detail::text IS NULL THEN '\xffffffffffffffff'::bytea
                    ELSE int8send(octet_length(convert_to(e.detail::text, 'UTF8'))::bigint) || convert_to(e.detail::text, 'UTF8') END)
               ORDER BY e.i)
    INTO bodies
    FROM unnest(mayfly_audit_append.at, mayfly_audit_append.actor, mayfly_audit_append.action,
                mayfly_audit_append.outcome, mayfly_audit_append.task_id,
                mayfly_audit_append.agent, mayfly_audit_append.jti,
                mayfly_audit_append.reason, mayfly_audit_append.detail)
         WITH ORDINALITY AS e(at, actor, action, outcome, task_id, agent, jti, reason, detail, i);
    SELECT last_seq, last_hash INTO s, p FROM audit_chain FOR UPDATE;
    FOR i IN 1..n LOOP
        prevs[i] := p;
        p := sha256(convert_to('mayfly-audit-v1', 'UTF8') || int8send(s + i) || p || bodies[i]);
        hashes[i] := p;
    END LOOP;
    INSERT INTO audit_events
        (at, actor, action, outcome, task_id, agent, jti, reason, detail, seq, prev_hash, hash)
    SELECT e.at, e.actor, e.action, e.outcome, e.task_id, e.agent, e.jti, e.reason, e.detail,
           s + e.i, e.prev_hash, e.hash
    FROM unnest(mayfly_audit_append.at, mayfly_audit_append.actor, mayfly_audit_append.action,
                mayfly_audit_append.outcome, mayfly_audit_append.task_id,
                mayfly_audit_append.agent, mayfly_audit_append.jti,
                mayfly_audit_append.reason, mayfly_audit_append.detail, prevs, hashes)
         WITH ORDINALITY AS e(at, actor, action, outcome, task_id, agent, jti, reason, detail,
                              prev_hash, hash, i)
    ORDER BY e.i;
    UPDATE audit_chain SET last_seq = s + n, last_hash = p;
    RETURN n;
END $$;
