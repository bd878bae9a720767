-- Settings of the database itself, shared by every process that uses it (issue 16).
-- `ledger_mode`: inline | journal (opsdsl.runtime.sequencer). It is the database's, not a
-- process's: one process chaining inline beside others journaling would chain a run's
-- entries out of commit order. Recorded by the first process that opens the database (its
-- $OPSDSL_LEDGER_MODE, else inline); changed with `opsdsl db ledger-mode`.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
