-- Addresses mailfleet must not send to: checked before every send (the job becomes
-- `suppressed`, no provider call) and when the API accepts a job. `tenant` '' applies to every
-- tenant; a tenant's own row applies to its jobs only. An expired row no longer suppresses.
CREATE TABLE suppressions (
    address    text NOT NULL CHECK (address = lower(address) AND address LIKE '%@%'),
    tenant     text NOT NULL DEFAULT '',
    reason     text NOT NULL CHECK (reason IN ('bounce', 'complaint', 'unsubscribe', 'manual')),
    note       text,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address, tenant)
);
