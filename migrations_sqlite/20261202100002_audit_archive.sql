-- Archiving the audit trail, as PostgreSQL's migration 20261202000002: the
-- oldest sealed events are exported and removed, the chain anchored at the last
-- of them. audit_anchor holds the position and hash of the last event archived;
-- the stored chain starts after it.

CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL CHECK (seq >= 0),
    hash BLOB NOT NULL
) STRICT;
INSERT INTO audit_anchor (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- The anchor moves only forward, never past the chain's head, and only to a
-- sealed event with exactly the hash it names; it is never deleted (REPLACE
-- deletes too: recursive_triggers is on).
CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor
WHEN NOT (NEW.id IS OLD.id AND NEW.seq > OLD.seq
          AND NEW.seq <= (SELECT last_seq FROM audit_chain)
          AND EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash))
BEGIN
    SELECT RAISE(ABORT, 'the audit anchor moves only forward, to a sealed event with its hash');
END;

CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor
BEGIN
    SELECT RAISE(ABORT, 'the audit anchor moves only forward, to a sealed event with its hash');
END;

-- Its one row is inserted above: an INSERT (OR REPLACE, even on a connection
-- without recursive_triggers) would replace it past the update guard.
CREATE TRIGGER audit_anchor_no_insert BEFORE INSERT ON audit_anchor
BEGIN
    SELECT RAISE(ABORT, 'the audit anchor moves only forward, to a sealed event with its hash');
END;

-- Append-only, but for archived events: an event is deleted only if it is
-- sealed at or below the anchor, i.e. was exported and anchored first.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT (OLD.seq IS NOT NULL AND OLD.seq <= (SELECT seq FROM audit_anchor))
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
