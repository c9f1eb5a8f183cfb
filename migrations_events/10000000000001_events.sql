-- The event store: one row per event, one stream per aggregate instance.
-- `position` is assigned under a transaction-scoped advisory lock (see eventstore/postgres.rs),
-- so positions are gap-free and become visible in order: a reader that saw position n has
-- seen every position below n.
CREATE TABLE events (
    position      BIGINT      PRIMARY KEY,
    sale_id       UUID        NOT NULL,
    stream_id     TEXT        NOT NULL,
    version       BIGINT      NOT NULL CHECK (version > 0),
    event_type    TEXT        NOT NULL,
    event_version INTEGER     NOT NULL,
    payload       BYTEA       NOT NULL,
    metadata      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- Hydrating one sale's writer, and catching it up after another instance appended.
CREATE INDEX events_sale_position_idx ON events (sale_id, position);
