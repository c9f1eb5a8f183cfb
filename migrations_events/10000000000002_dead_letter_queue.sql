-- The dead letter queue: bus messages a consumer could not handle (a poison message at once,
-- a transient failure after its retries), and later messages of the same stream parked behind
-- them so that a stream is never applied out of order. Admins work through it over
-- /admin/dlq; every state change records who and when.
CREATE TABLE dead_letter_queue (
    id              BIGSERIAL   PRIMARY KEY,
    consumer        TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    partition       INTEGER     NOT NULL,
    "offset"        BIGINT      NOT NULL,
    message_key     TEXT        NOT NULL,
    -- Read from the headers where they were readable; NULL for a message too broken to tell.
    stream_id       TEXT,
    stream_version  BIGINT,
    event_type      TEXT,
    event_version   INTEGER,
    payload         BYTEA       NOT NULL,
    -- Every header of the message (correlation id, traceparent, ...), as a JSON object.
    metadata        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    error           TEXT        NOT NULL,
    -- The error's cause chain, outermost first.
    causes          JSONB       NOT NULL DEFAULT '[]'::jsonb,
    -- The open entry of the same stream this one waits behind, when it was parked.
    parked_behind   BIGINT      REFERENCES dead_letter_queue (id),
    retry_count     INTEGER     NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'resolved', 'discarded')),
    resolved_by     UUID,
    resolved_at     TIMESTAMPTZ,
    notes           TEXT
);

-- Is a stream blocked? Asked for every message a consumer handles.
CREATE INDEX dead_letter_queue_open_idx ON dead_letter_queue (consumer, stream_id, id)
    WHERE status IN ('pending', 'processing');
-- Listing by status, newest first.
CREATE INDEX dead_letter_queue_status_idx ON dead_letter_queue (status, id DESC);

-- Where the outbox relay has published up to: every event at or below `position` was
-- acknowledged by the broker. Its row is locked (FOR UPDATE SKIP LOCKED) while a batch is
-- published, so one instance relays at a time and the others stand by.
CREATE TABLE outbox_relay (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL CHECK (position >= 0)
);
