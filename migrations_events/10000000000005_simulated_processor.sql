-- The simulated card processor's own ledger. It plays an external processor (what Stripe
-- keeps on its side): the service's code never joins it with its own tables, and it outlives
-- the service's processes, so payment reconciliation can find a capture whose process died
-- before recording it. One row per payment id (the processor's idempotency key).
CREATE TABLE simulated_processor_charges (
    payment_id     UUID        PRIMARY KEY,
    reservation_id UUID        NOT NULL,
    event_id       UUID        NOT NULL,
    amount_cents   BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    outcome        TEXT        NOT NULL CHECK (outcome IN ('captured', 'declined')),
    -- The charge id of a capture; the reason of a decline.
    charge_id      TEXT,
    decline_reason TEXT,
    refunded       BOOLEAN     NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL
);

-- "List captures since": what reconciliation asks every RECONCILE_INTERVAL_SECONDS.
CREATE INDEX simulated_processor_captures_by_time
    ON simulated_processor_charges (created_at)
    WHERE outcome = 'captured';
