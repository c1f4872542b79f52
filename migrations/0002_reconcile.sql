-- Bookkeeping for the reconciler and for ambiguous attempts.
--
-- due_at: when the job may next be attempted (a retry's due time, or a future send_at); the
--         reconciler leaves a row alone until it is overdue by its threshold.
-- reenqueued: how many times the reconciler put the job back on its stream because Redis no
--         longer seemed to hold it.
ALTER TABLE emails ADD COLUMN due_at timestamptz;
ALTER TABLE emails ADD COLUMN reenqueued integer NOT NULL DEFAULT 0;

-- Attempts whose outcome could not be known (the worker stopped after claiming, or the request
-- left and no answer came back): what `ambiguous` counts.
CREATE INDEX email_attempts_unknown_idx ON email_attempts (email_id) WHERE outcome = 'unknown';
