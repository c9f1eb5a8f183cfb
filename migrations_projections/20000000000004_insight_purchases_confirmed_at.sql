-- The operators' dashboard sums the purchases confirmed in the last 24 hours
-- (`Insights::sales_since`): without this index, a scan of every purchase ever made.
-- Not built CONCURRENTLY: instances migrate one at a time under an advisory lock, and a
-- concurrent build waits for every snapshot in the database, that lock's waiters included.
-- Writes to the table wait while it builds (seconds for millions of rows); to avoid even
-- that, build it by hand first (RUNBOOK.md, Migrations), and this becomes a no-op.
CREATE INDEX IF NOT EXISTS insight_purchases_confirmed_at_idx
    ON insight_purchases (purchased_at) WHERE status = 'confirmed';
