-- Insights: sales analytics and purchase history, now asynchronous projections fed by the bus
-- (`projections::insights`), replacing the synchronous sales_by_* tables and the history
-- drawn from reservation_views. Like every view here they are rebuilt from the log at will.

DROP TABLE sales_by_section;
DROP TABLE sales_by_event;
DROP INDEX reservation_views_history_idx;
ALTER TABLE reservation_views DROP COLUMN purchased_at;

-- Idempotency of bus consumers: the last version of each stream a consumer applied, written in
-- the transaction that applied it. An event at or below it is a duplicate and changes nothing.
CREATE TABLE consumer_stream_versions (
    consumer  TEXT   NOT NULL,
    stream_id TEXT   NOT NULL,
    version   BIGINT NOT NULL CHECK (version > 0),
    PRIMARY KEY (consumer, stream_id)
);

-- Per event: its name (for the history) and running sales totals. The row appears with the
-- event's creation or its first sale, whichever the consumer sees first.
CREATE TABLE insight_events (
    event_id      UUID   PRIMARY KEY,
    name          TEXT,
    currency      TEXT   CHECK (currency ~ '^[A-Z]{3}$'),
    tickets_sold  BIGINT NOT NULL DEFAULT 0 CHECK (tickets_sold >= 0),
    revenue_cents BIGINT NOT NULL DEFAULT 0
);

-- Sales totals of one section; first_position = log position of its first sale, the order the
-- API shows sections in. Stays, at 0, after refunds.
CREATE TABLE insight_sections (
    event_id       UUID   NOT NULL,
    section        TEXT   NOT NULL,
    first_position BIGINT NOT NULL CHECK (first_position > 0),
    tickets_sold   BIGINT NOT NULL DEFAULT 0 CHECK (tickets_sold >= 0),
    revenue_cents  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, section)
);

-- One row per reservation; purchased_at is set on confirmation and kept after a refund: rows
-- with it are the customer's history.
CREATE TABLE insight_purchases (
    reservation_id UUID        PRIMARY KEY,
    event_id       UUID        NOT NULL,
    user_id        UUID        NOT NULL,
    section        TEXT        NOT NULL,
    quantity       BIGINT      NOT NULL CHECK (quantity BETWEEN 0 AND 4294967295),
    total_cents    BIGINT      NOT NULL,
    currency       TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status         TEXT        NOT NULL
        CHECK (status IN ('pending', 'confirmed', 'expired', 'cancelled', 'refunded')),
    payment_id     UUID,
    purchased_at   TIMESTAMPTZ
);
CREATE INDEX insight_purchases_history_idx
    ON insight_purchases (user_id, purchased_at DESC, reservation_id DESC)
    WHERE purchased_at IS NOT NULL;
