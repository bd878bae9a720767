-- The Idempotency-Key of the intake request that brought an event (source, key and the
-- event's place in the request): a client's retry of a request whose answer it lost, to
-- the same or another `serve` replica, stores nothing new and starts no second run.
ALTER TABLE events ADD COLUMN idem_key TEXT;
CREATE UNIQUE INDEX events_key ON events(idem_key);
