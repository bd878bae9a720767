-- Leases of workers (issue 16 item 2, opsdsl.runtime.lease): a worker drives a run only
-- while it holds the run's lease, measured by the database's clock; every write checks the
-- epoch, so a presumed-dead owner's late write changes nothing. A paused run holds none.
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_until DOUBLE PRECISION;
-- Claim queries: live top-level runs whose lease is free or lapsed.
CREATE INDEX runs_lease ON runs(status, lease_until) WHERE parent_run IS NULL;

-- Named leases held by one worker at a time (e.g. `events`: the worker that evaluates the
-- accepted events, in order, against the triggers' shared state).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    lease_owner TEXT,
    lease_epoch BIGINT NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION
);
