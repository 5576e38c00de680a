-- The kill switch: while a freeze stands, no token is issued to what it covers (an
-- agent, as holder or as the task's agent; a workflow; everything). Lifting it is
-- an explicit, audited act.
CREATE TABLE freezes (
    kind   text NOT NULL CHECK (kind IN ('agent', 'workflow', 'all')),
    target text NOT NULL,
    reason text NOT NULL,
    actor  text NOT NULL,
    at     timestamptz NOT NULL,
    PRIMARY KEY (kind, target),
    CHECK ((kind = 'all') = (target = ''))
);
