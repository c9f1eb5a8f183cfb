-- When an entry was claimed for a retry (status 'processing'). A claim older than the claim
-- timeout belongs to an instance that died mid-retry: every instance returns such entries to
-- 'pending' (NULL: claimed before this column existed, treated as stale).
ALTER TABLE dead_letter_queue ADD COLUMN claimed_at TIMESTAMPTZ;
