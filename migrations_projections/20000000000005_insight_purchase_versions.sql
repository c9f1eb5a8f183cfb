-- The insights consumer's version guard for reservation streams moves onto the purchase row
-- it guards (`projections::insights::versions`): one row per reservation in
-- consumer_stream_versions, keyed by text, cost more than the purchase row itself during an
-- on-sale (BENCHMARKS.md, session 38). 0: the version is where it was kept before (a row
-- written before this migration, or a stream whose dead letter an admin closed before its
-- placement applied); the guard reads both and takes the greater.
-- A constant default: the column is added without rewriting or scanning the table.
ALTER TABLE insight_purchases ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
