-- Until when an instance holds a pending delivery it is sending (its attempt, or its next
-- attempt and that attempt's time-out): other instances do not send it meanwhile. NULL: nobody
-- holds it; a holder that died lets go when the time passes.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until TIMESTAMPTZ;
