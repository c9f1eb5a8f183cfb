-- Accounts. `email` arrives normalised (trimmed, lower-case) from the auth service, so a plain
-- unique constraint is the uniqueness rule; the adapter reports its violation, by name, as
-- `EmailTaken`. `password_hash` is an Argon2id PHC string, never a password.
CREATE TABLE users (
    id            UUID        PRIMARY KEY,
    email         TEXT        NOT NULL,
    name          TEXT        NULL,
    role          TEXT        NOT NULL CHECK (role IN ('customer', 'organizer', 'admin')),
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);
COMMENT ON TABLE users IS
    'Accounts. email is normalised (trimmed, lower-case) by the service; password_hash is an Argon2id PHC string, never a password.';

-- Login sessions, keyed by the SHA-256 hex digest of the bearer token (never the token itself).
-- Expired rows are refused by the service and deleted when presented; the `expires_at` index
-- serves a sweep of the rest, the `user_id` index the cascade and per-account lookups.
CREATE TABLE sessions (
    token_hash TEXT        PRIMARY KEY,
    user_id    UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
COMMENT ON TABLE sessions IS
    'Login sessions keyed by the SHA-256 hex digest of the bearer token; the raw token is never stored.';

-- Stored replies of requests that carried an `Idempotency-Key`, so that a retry reaching
-- another instance, or arriving after a restart, gets the first answer again. `fingerprint`
-- is the SHA-256 of the request body, to refuse a key reused for a different request.
-- Rows are kept 24 h; the `created_at` index serves the sweep.
CREATE TABLE idempotency_keys (
    user_id     UUID        NOT NULL,
    scope       TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint BYTEA       NOT NULL,
    status      SMALLINT    NOT NULL,
    body        JSONB       NOT NULL,
    location    TEXT        NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, scope, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
COMMENT ON TABLE idempotency_keys IS
    'Replies of idempotent HTTP requests per (user, scope, Idempotency-Key), replayed to retries; kept 24 h.';
