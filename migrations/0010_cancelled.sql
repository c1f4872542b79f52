-- An operator (`mailfleet email cancel`, `DELETE /v1/emails/{id}`) can cancel a job that is
-- still waiting (queued, or retrying in the delayed set): it becomes `cancelled`, final, and a
-- worker that reads its entry acks it without a send.
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'retrying', 'failed', 'dead', 'suppressed', 'unknown',
     'delivered', 'bounced', 'complained', 'duplicate', 'cancelled'));

-- An email's provider events (`mailfleet email show`). No index is added to `emails` for the
-- operator's look-ups: every status change rewrites the row, and each index on it would cost
-- every send an index entry; `email list` and a look-up by an expired idempotency key scan.
CREATE INDEX webhook_events_job_idx ON webhook_events (job_id) WHERE job_id IS NOT NULL;
