-- When the reconciler last put a job back on its stream: the time of that entry, so a later
-- pass can tell whether the job may still be waiting behind a backlog (lua/backlog.lua).
ALTER TABLE emails ADD COLUMN requeued_at timestamptz;
