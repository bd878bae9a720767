-- The runs that ended in a window of time, looked up by the incident sweep of every worker
-- (opsdsl.runtime.incident_sweep): a pass must not scan every run ever finished.
CREATE INDEX runs_finished ON runs(finished_at);
