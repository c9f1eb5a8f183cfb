-- Webhook endpoints of organizers and the deliveries made to them (src/webhooks/postgres.rs).
CREATE TABLE webhook_endpoints (
    id                     UUID PRIMARY KEY,
    owner_id               UUID NOT NULL,
    url                    TEXT NOT NULL,
    event_types            TEXT[] NOT NULL,
    event_id               UUID,
    description            TEXT,
    status                 TEXT NOT NULL CHECK (status IN ('active', 'failing', 'disabled')),
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL,
    -- The event log's head at registration: only later events are delivered.
    from_position          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at);

CREATE TABLE webhook_deliveries (
    seq              BIGSERIAL PRIMARY KEY,
    id               UUID NOT NULL UNIQUE,
    endpoint_id      UUID NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id       TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    next_attempt_at  TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (endpoint_id, message_id)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, seq DESC);
