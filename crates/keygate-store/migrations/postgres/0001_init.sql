-- Times are unix milliseconds (UTC). JSON columns hold arrays or objects as text, as on
-- SQLite, so both backends share their queries.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    plan       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    digest         BYTEA NOT NULL UNIQUE,
    environment    TEXT NOT NULL,
    permissions    TEXT NOT NULL,
    ip_allowlist   TEXT NOT NULL,
    rate_limit     TEXT,
    quota          TEXT,
    quota_used     BIGINT NOT NULL DEFAULT 0,
    meta           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    rotated_from   TEXT
);
CREATE INDEX api_keys_by_account ON api_keys(account_id, created_at);

CREATE TABLE audit_events (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         BIGINT NOT NULL,
    account_id TEXT,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target_id  TEXT,
    client_ip  TEXT,
    details    TEXT NOT NULL
);
CREATE INDEX audit_events_by_account ON audit_events(account_id, seq);
