-- Per-customer ticket limits (issue 15): the event's `max_tickets_per_customer` as the API shows
-- it. NULL = no limit. The limit is enforced by the sale's writer from its in-memory state, never
-- from this column; the read model only displays it. Rows written before this migration had no
-- limit, which is what NULL means, so nothing needs a backfill (a rebuild gives the same).
ALTER TABLE event_views
    ADD COLUMN max_tickets_per_customer BIGINT
        CHECK (max_tickets_per_customer BETWEEN 1 AND 4294967295);
COMMENT ON COLUMN event_views.max_tickets_per_customer IS
    'Most pending + confirmed tickets one customer may hold for the event (event.created / event.details_changed v2); NULL = no limit.';
