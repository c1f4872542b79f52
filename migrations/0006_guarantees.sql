-- How often a job was replayed from the dead-letter stream. `dlq replay` raises it when it
-- revives a dead row, and the reconciler writes it into every entry it rebuilds, so
-- `--max-replays` holds even for a job whose entry Redis lost.
ALTER TABLE emails ADD COLUMN replays integer NOT NULL DEFAULT 0 CHECK (replays >= 0);

-- A provider event can arrive before the worker records `sent` (the provider's webhook is
-- faster than our recorder). Such an event is kept `pending`, with its job, and applied by a
-- worker's periodic pass once the row reaches a status the event applies to.
ALTER TABLE webhook_events ADD COLUMN job_id uuid;
ALTER TABLE webhook_events ADD COLUMN pending boolean NOT NULL DEFAULT false;
CREATE INDEX webhook_events_pending_idx ON webhook_events (job_id) WHERE pending;
