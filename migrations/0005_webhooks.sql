-- Provider events (webhooks): what happened after a provider took an email. `delivered`,
-- `bounced` and `complained` are final statuses set by those events after `sent`.
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'retrying', 'failed', 'dead', 'suppressed', 'unknown',
     'delivered', 'bounced', 'complained'));

-- Every event applied, once: a repeated delivery of the same event changes nothing. Mailgun's
-- single-use tokens are kept here too (kind 'token'), so a replayed request is refused.
CREATE TABLE webhook_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    kind        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
