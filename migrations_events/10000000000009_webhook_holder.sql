-- Which instance holds a pending delivery (its dispatcher's id, new at each start): only that
-- holder claims it again before a retry and records its attempts, so a second instance that
-- took it over (after a redelivery, or a hold that ran out) is never undone by the first.
-- NULL: nobody holds it. Additive: an older release ignores it (and its claims leave it as it
-- was, so during a rolling upgrade an older and a newer instance may still both send one
-- delivery, as before).
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by UUID;
