-- Read models: the views HTTP queries answer from, rebuilt from the event log at will.
-- Written only by `projections::postgres` (one transaction per batch, together with the
-- checkpoint); nothing here is a source of truth. Counts that are u32/u64 in Rust are BIGINT
-- with range checks; money is BIGINT minor units beside a TEXT ISO 4217 currency. Each view row
-- keeps the version of the stream that last changed it, so an event applied twice changes nothing.

CREATE TABLE projection_checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL CHECK (position >= 0)
);
COMMENT ON TABLE projection_checkpoints IS
    'Last log position each projection has applied. Its row is locked (FOR UPDATE) while a batch is applied, so service instances sharing these tables apply each batch once.';

CREATE TABLE event_views (
    event_id          UUID        PRIMARY KEY,
    owner_id          UUID        NOT NULL,
    name              TEXT        NOT NULL,
    description       TEXT,
    venue_name        TEXT        NOT NULL,
    venue_address     TEXT        NOT NULL,
    starts_at         TIMESTAMPTZ NOT NULL,
    ends_at           TIMESTAMPTZ NOT NULL,
    currency          TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status            TEXT        NOT NULL
        CHECK (status IN ('draft', 'published', 'on_sale', 'sales_closed', 'cancelled')),
    version           BIGINT      NOT NULL CHECK (version >= 0),
    inventory_version BIGINT      NOT NULL DEFAULT 0 CHECK (inventory_version >= 0),
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE event_views IS
    'One row per ticketed event (EventView without its sections). version = version of the event-<id> stream (the ETag); inventory_version = last applied version of inventory-<id>, the guard of event_sections.';
-- Listing: by status (public lists, ?status=), by owner (organizer dashboards), and unfiltered
-- (admins), each in the (starts_at, event_id) order the API returns.
CREATE INDEX event_views_status_idx ON event_views (status, starts_at, event_id);
CREATE INDEX event_views_owner_idx ON event_views (owner_id, starts_at, event_id);
CREATE INDEX event_views_starts_idx ON event_views (starts_at, event_id);

CREATE TABLE event_sections (
    event_id    UUID    NOT NULL REFERENCES event_views (event_id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    ordinal     INTEGER NOT NULL CHECK (ordinal >= 0),
    capacity    BIGINT  NOT NULL CHECK (capacity BETWEEN 0 AND 4294967295),
    price_cents BIGINT  NOT NULL,
    held        BIGINT  NOT NULL DEFAULT 0 CHECK (held BETWEEN 0 AND 4294967295),
    sold        BIGINT  NOT NULL DEFAULT 0 CHECK (sold BETWEEN 0 AND 4294967295),
    PRIMARY KEY (event_id, name)
);
COMMENT ON TABLE event_sections IS
    'Seat counts of one section of an event (SectionView; available is computed on read). ordinal = index in the latest inventory.stocked list, the order the API shows sections in.';

CREATE TABLE reservation_views (
    reservation_id UUID        PRIMARY KEY,
    event_id       UUID        NOT NULL,
    user_id        UUID        NOT NULL,
    section        TEXT        NOT NULL,
    quantity       BIGINT      NOT NULL CHECK (quantity BETWEEN 0 AND 4294967295),
    status         TEXT        NOT NULL
        CHECK (status IN ('pending', 'confirmed', 'expired', 'cancelled', 'refunded')),
    total_cents    BIGINT      NOT NULL,
    currency       TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    expires_at     TIMESTAMPTZ NOT NULL,
    payment_id     UUID,
    purchased_at   TIMESTAMPTZ,
    version        BIGINT      NOT NULL CHECK (version >= 0),
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE reservation_views IS
    'One row per reservation (ReservationView). purchased_at is set on confirmation and kept after a refund: rows with it are the customer history. version = version of the reservation-<id> stream.';
-- A customer's reservations, and everyone's, newest first.
CREATE INDEX reservation_views_user_idx
    ON reservation_views (user_id, created_at DESC, reservation_id DESC);
CREATE INDEX reservation_views_created_idx
    ON reservation_views (created_at DESC, reservation_id DESC);
-- Holds to re-arm at start-up: only the pending rows, a small fraction of the table.
CREATE INDEX reservation_views_pending_idx
    ON reservation_views (expires_at, reservation_id) INCLUDE (event_id)
    WHERE status = 'pending';
-- Purchase history, newest purchase first.
CREATE INDEX reservation_views_history_idx
    ON reservation_views (user_id, purchased_at DESC, reservation_id DESC)
    WHERE purchased_at IS NOT NULL;

CREATE TABLE payment_views (
    payment_id     UUID        PRIMARY KEY,
    reservation_id UUID        NOT NULL,
    event_id       UUID        NOT NULL,
    user_id        UUID        NOT NULL,
    status         TEXT        NOT NULL CHECK (status IN ('captured', 'failed', 'refunded')),
    amount_cents   BIGINT      NOT NULL,
    currency       TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reason         TEXT,
    version        BIGINT      NOT NULL CHECK (version >= 0),
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE payment_views IS
    'One row per payment attempt (PaymentView): captured, failed (declined) or refunded. version = version of the payment-<id> stream.';
-- A customer's payments, newest first.
CREATE INDEX payment_views_user_idx
    ON payment_views (user_id, created_at DESC, payment_id DESC);

CREATE TABLE sales_by_event (
    event_id      UUID   PRIMARY KEY,
    currency      TEXT   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    tickets_sold  BIGINT NOT NULL DEFAULT 0 CHECK (tickets_sold >= 0),
    revenue_cents BIGINT NOT NULL DEFAULT 0
);
COMMENT ON TABLE sales_by_event IS
    'Running sales totals of an event (SalesView): a confirmation adds its tickets and total, a refund of the reservation takes them back. Counters, so that sales() reads one row per section.';

CREATE TABLE sales_by_section (
    event_id       UUID   NOT NULL REFERENCES sales_by_event (event_id) ON DELETE CASCADE,
    section        TEXT   NOT NULL,
    first_position BIGINT NOT NULL CHECK (first_position > 0),
    tickets_sold   BIGINT NOT NULL DEFAULT 0 CHECK (tickets_sold >= 0),
    revenue_cents  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, section)
);
COMMENT ON TABLE sales_by_section IS
    'Sales totals of one section (SectionSales). The row appears with the first sale counted in the section and stays, at 0 after refunds; first_position = log position of that sale, the order the API shows.';
