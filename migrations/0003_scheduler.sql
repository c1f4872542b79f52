-- The scheduler: leader fencing, audiences, recurring schedules and their runs.

-- The highest fencing token each named lease has written with. Every leader side effect runs in
-- a transaction that first does `UPDATE leader_fence SET token = $t WHERE name = $n AND
-- token <= $t`; zero rows means a newer leader exists, and the transaction rolls back. The lease
-- script also takes its floor from here, so tokens never go backwards after Redis loses its data.
CREATE TABLE leader_fence (
    name       text PRIMARY KEY,
    token      bigint NOT NULL DEFAULT 0 CHECK (token >= 0),
    holder     text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO leader_fence (name) VALUES ('scheduler');

CREATE TABLE audiences (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A member's id orders the fan-out: it is the cursor a new leader resumes from.
CREATE TABLE audience_members (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    audience_id bigint NOT NULL REFERENCES audiences (id) ON DELETE CASCADE,
    email       text NOT NULL,
    vars        jsonb NOT NULL DEFAULT '{}'::jsonb,
    subscribed  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (audience_id, email)
);
CREATE INDEX audience_members_fanout_idx ON audience_members (audience_id, id) WHERE subscribed;

CREATE TABLE schedules (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    template         text NOT NULL,
    audience_id      bigint NOT NULL REFERENCES audiences (id) ON DELETE RESTRICT,
    from_addr        text NOT NULL,
    lane             text NOT NULL DEFAULT 'bulk' CHECK (lane IN ('tx', 'bulk')),
    vars             jsonb NOT NULL DEFAULT '{}'::jsonb,
    enabled          boolean NOT NULL DEFAULT true,
    -- Ticks more than the scheduler's grace late when a leader first sees them were missed
    -- (no leader ran): `skip` drops them, `once` fires the latest of them once.
    catch_up         text NOT NULL DEFAULT 'once' CHECK (catch_up IN ('skip', 'once')),
    -- A tick is never fired, and a fan-out never continued, this long after its time.
    stale_after_secs integer NOT NULL DEFAULT 3600 CHECK (stale_after_secs > 0),
    -- The next tick not yet handled: the leader advances it in the same fenced transaction that
    -- records the tick's run, so a tick is handled exactly once.
    next_tick        timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_tick) WHERE enabled;

-- One row per handled tick. `cursor` is the last member id whose job is committed here (an
-- `emails` row with a deterministic id); `pushed` the last one known to be on its Redis stream.
-- A new leader re-pushes (pushed, cursor] and continues after `cursor`.
CREATE TABLE schedule_runs (
    schedule_id   bigint NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    tick          timestamptz NOT NULL,
    status        text NOT NULL CHECK (status IN ('fanning_out', 'done', 'skipped', 'stale')),
    token         bigint NOT NULL,
    fired_at      timestamptz NOT NULL DEFAULT now(),
    total         integer NOT NULL DEFAULT 0,
    enqueued      integer NOT NULL DEFAULT 0,
    cursor        bigint NOT NULL DEFAULT 0,
    pushed        bigint NOT NULL DEFAULT 0,
    skipped_ticks integer NOT NULL DEFAULT 0,
    detail        text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (schedule_id, tick)
);
CREATE INDEX schedule_runs_open_idx ON schedule_runs (fired_at) WHERE status = 'fanning_out';
