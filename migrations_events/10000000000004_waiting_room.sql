-- The virtual waiting room of on-sales (src/queue/postgres.rs): one row per event's queue with
-- its settings and the admission state every instance advances under the row's lock, and one
-- ticket per (event, user).
CREATE TABLE waiting_rooms (
    event_id          UUID PRIMARY KEY,
    enabled           BOOLEAN NOT NULL,
    admit_per_minute  INTEGER NOT NULL CHECK (admit_per_minute BETWEEN 1 AND 1000000),
    pass_ttl_seconds  INTEGER NOT NULL CHECK (pass_ttl_seconds BETWEEN 60 AND 3600),
    shuffle_until     TIMESTAMPTZ,
    -- Admission has handed out its slots up to this moment (the fraction of a slot since
    -- then is still owed); moved only under the row's lock.
    advanced_at       TIMESTAMPTZ NOT NULL,
    admitted          BIGINT NOT NULL DEFAULT 0,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- Arrival order across instances for joins after the shuffle window.
CREATE SEQUENCE queue_arrival;

CREATE TABLE queue_tickets (
    id           UUID PRIMARY KEY,
    event_id     UUID NOT NULL,
    user_id      UUID NOT NULL,
    -- The place in line: a random draw for joins before shuffle_until, after those the
    -- arrival order (src/queue/mod.rs, ARRIVAL_BASE).
    rank         BIGINT NOT NULL,
    joined_at    TIMESTAMPTZ NOT NULL,
    admitted_at  TIMESTAMPTZ,
    UNIQUE (event_id, user_id)
);
CREATE INDEX queue_tickets_waiting ON queue_tickets (event_id, rank, id) WHERE admitted_at IS NULL;
