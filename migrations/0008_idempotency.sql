-- The idempotency backstop. A dedup marker lives on one Redis master, and a failover that
-- loses it lets a retry with the same idempotency key enqueue a second job with a new id. At
-- claim, each job with a key takes the (tenant, key) here; a job that finds it held by another
-- job within the dedup window is that job's duplicate: recorded `duplicate`, never sent.
CREATE TABLE idempotency_keys (
    tenant      text NOT NULL DEFAULT '',
    key         text NOT NULL,
    job_id      uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'retrying', 'failed', 'dead', 'suppressed', 'unknown',
     'delivered', 'bounced', 'complained', 'duplicate'));
