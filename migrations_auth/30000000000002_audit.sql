-- The audit trail of sensitive actions: who (actor_id, null for an anonymous caller or a failed
-- login; actor_label keeps the role, or the attempted email of a failed login, never a
-- password), did what (`action`, a dotted name such as `auth.login` or `dlq.retry`), to which
-- resource (`resource_type` + `resource_id`), with what `result`, from where (client IP, user
-- agent) and within which request (`correlation_id`). Rows are only ever inserted.
CREATE TABLE audit_log (
    id             UUID        PRIMARY KEY,
    -- Insertion order: breaks ties between records of the same instant (newest first).
    seq            BIGSERIAL   NOT NULL,
    at             TIMESTAMPTZ NOT NULL,
    actor_id       UUID        NULL,
    actor_label    TEXT        NULL,
    action         TEXT        NOT NULL,
    resource_type  TEXT        NOT NULL,
    resource_id    TEXT        NULL,
    result         TEXT        NOT NULL CHECK (result IN ('success', 'failure', 'denied')),
    correlation_id TEXT        NULL,
    client_ip      TEXT        NULL,
    user_agent     TEXT        NULL,
    details        JSONB       NOT NULL DEFAULT '{}'::jsonb
);
-- The listing is newest first, filtered by actor, action or resource.
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, seq DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, at DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, at DESC);
CREATE INDEX audit_log_resource_idx ON audit_log (resource_type, resource_id, at DESC);
COMMENT ON TABLE audit_log IS
    'Append-only audit trail of sensitive actions (logins, registrations, event changes, refunds, DLQ actions); never holds a password or token.';
