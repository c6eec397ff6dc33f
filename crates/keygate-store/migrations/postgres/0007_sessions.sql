-- Browser sessions (dashboard, portal) and portal links not yet opened, shared by every
-- node. `digest` is SHA-256 of the secret in the cookie or link; the secret is not kept.
-- `data` is JSON: who the session acts as, portal limits, the one-time notice.
CREATE TABLE sessions (
    digest       BYTEA PRIMARY KEY,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    account_id   TEXT,
    csrf         TEXT NOT NULL,
    data         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
