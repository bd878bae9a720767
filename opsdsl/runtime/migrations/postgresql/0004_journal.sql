-- The ledger's journal (opt-in ledger mode `journal`, see docs/scaleout.md "One ledger: the
-- sequencer"): state transactions insert their entries here, unchained; one leader-elected
-- sequencer (opsdsl.runtime.sequencer) chains them into `ledger` in batches, deletes them
-- from here and signs a checkpoint of the new head, all in one transaction.
CREATE TABLE journal (
    id BIGSERIAL PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- the writing transaction
    run TEXT,                                         -- NULL for entries about no run
    run_order BIGINT,                                 -- the run's n-th journaled entry: its commit order
    ts DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,                               -- canonical JSON, exactly the text hashed
    CHECK ((run IS NULL) = (run_order IS NULL))
);
CREATE INDEX journal_xid ON journal(xid, id);
CREATE INDEX journal_run ON journal(run, run_order);

-- How many entries each run has journaled. A transaction that journals for a run adds to
-- its row here and so holds the row's lock until it commits: the next transaction
-- journaling for that run waits, and gets the next numbers. Per-run number order is
-- therefore the run's commit order.
CREATE TABLE journal_runs (
    run TEXT PRIMARY KEY,
    journaled BIGINT NOT NULL
);

-- How many of each run's journaled entries the sequencer has chained (written by the
-- sequencer alone, so it never waits for a writer's row lock).
CREATE TABLE journal_chained (
    run TEXT PRIMARY KEY,
    chained BIGINT NOT NULL
);
