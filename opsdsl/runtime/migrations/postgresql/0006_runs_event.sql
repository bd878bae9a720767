-- The run an event already started, looked up when a replayed event's hook would be
-- suppressed (opsdsl.runtime.service): a storm of duplicates must not scan every run.
CREATE INDEX runs_event ON runs(event_id);
