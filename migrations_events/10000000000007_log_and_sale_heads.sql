-- Heads of the event log, replacing "advisory lock + MAX(position)" (see eventstore/postgres.rs).
-- `event_log_head` is the log's one counter row: an append moves it by the number of events it
-- inserts, in the same statement, and holds its row lock until commit, so positions stay
-- gap-free and become visible in order. `sale_heads` counts each sale's events: a writer's turn
-- locks its sale's row (or, optimistically, appends only if the count is what it knows), so a
-- writer learns whether another instance wrote without reading the events.
--
-- Upgrade: binaries from before this migration number events with MAX(position) and do not
-- move these heads. Stop every old instance before the first new one starts (RUNBOOK.md). The
-- lock below only keeps the seeds exact while this migration runs.
LOCK TABLE events IN SHARE MODE;

CREATE TABLE event_log_head (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    position BIGINT   NOT NULL CHECK (position >= 0)
);
INSERT INTO event_log_head (id, position) SELECT 1, COALESCE(MAX(position), 0) FROM events;

CREATE TABLE sale_heads (
    sale_id UUID   PRIMARY KEY,
    events  BIGINT NOT NULL CHECK (events >= 0)
);
INSERT INTO sale_heads (sale_id, events) SELECT sale_id, COUNT(*) FROM events GROUP BY sale_id;
