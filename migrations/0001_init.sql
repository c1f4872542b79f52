-- The system of record. A row is written the first time a worker sees a job (or when the API
-- accepts it); from then on Postgres, not Redis, says what happened to the email.

CREATE TABLE emails (
    id                  uuid PRIMARY KEY,
    status              text NOT NULL CHECK (status IN
                          ('queued', 'sending', 'sent', 'retrying', 'failed', 'dead', 'suppressed', 'unknown')),
    lane                text NOT NULL CHECK (lane IN ('tx', 'bulk')),
    partition           smallint NOT NULL DEFAULT 0,
    idempotency_key     text,
    tenant              text,
    recipient_domain    text,
    template            text,
    provider            text,
    provider_message_id text,
    attempts            integer NOT NULL DEFAULT 0,
    -- Set by each claim; an outcome is recorded only by the holder of the current token, so a
    -- worker that lost its claim (reclaimed after a pause) cannot overwrite a newer attempt.
    claim_token         uuid,
    last_error          text,
    -- The payload as enqueued, so the job can be re-enqueued if Redis loses it.
    payload             text NOT NULL,
    enqueued_at         timestamptz NOT NULL,
    claimed_at          timestamptz,
    sent_at             timestamptz,
    recorded_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Rows that are not final yet: what a reconciler scans.
CREATE INDEX emails_open_idx ON emails (updated_at)
    WHERE status IN ('queued', 'sending', 'retrying');

CREATE TABLE email_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_id    uuid NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    provider    text,
    outcome     text NOT NULL,
    http_status integer,
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE INDEX email_attempts_email_idx ON email_attempts (email_id);

CREATE TABLE templates (
    name       text NOT NULL,
    version    integer NOT NULL CHECK (version > 0),
    subject    text NOT NULL,
    html       text,
    text       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version),
    CHECK (html IS NOT NULL OR text IS NOT NULL)
);
