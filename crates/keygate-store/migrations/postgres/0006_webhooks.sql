-- Lifecycle webhooks (Standard Webhooks v1). Endpoints keep their signing secret as text:
-- keygate must sign with it, so unlike API keys it cannot be a digest.
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    description     TEXT,
    events          TEXT NOT NULL,            -- JSON array of event types; [] = every type
    account_id      TEXT,                     -- NULL = every account
    secret          TEXT NOT NULL,            -- whsec_<base64>
    disabled_at     BIGINT,                   -- set by an operator or after days of failures
    disabled_reason TEXT,
    failing_since   BIGINT,                   -- first failure since the last success
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_created ON webhook_endpoints(created_at, id);

-- The outbox: written in the transaction of the change it reports.
CREATE TABLE webhook_events (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    account_id TEXT,
    subject_id TEXT,
    at         BIGINT NOT NULL,
    data       TEXT NOT NULL                  -- snapshot of the key or account at `at`
);

-- One row per (event, endpoint it matched when it was written).
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    status           TEXT NOT NULL,           -- pending | delivered | failed
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    leased_until     BIGINT,                  -- a node is sending it until then
    last_attempt_at  BIGINT,
    last_status_code BIGINT, 
    last_error       TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries(endpoint_id, created_at, id);

-- Time-based events already emitted: (key, lead time in days; 0 = key.expired).
CREATE TABLE webhook_expiry_notices (
    key_id    TEXT NOT NULL,
    lead_days BIGINT NOT NULL,
    PRIMARY KEY (key_id, lead_days)
);

-- Named leases: one node at a time runs a periodic job (the expiry scan).
CREATE TABLE webhook_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  BIGINT NOT NULL
);
