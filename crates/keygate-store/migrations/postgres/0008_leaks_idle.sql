-- When a secret scanner (or an operator) reported the key's secret as leaked (unix ms).
ALTER TABLE api_keys ADD COLUMN leaked_at BIGINT;
-- On a key replaced by rotation: revoke it once it has gone unused this long (ms) after
-- its successor's first use (its revoked_at, the grace period's end, is the latest).
ALTER TABLE api_keys ADD COLUMN retire_when_idle_ms BIGINT;
-- When the idle check first saw the successor used (unix ms): the idle clock starts here.
ALTER TABLE api_keys ADD COLUMN successor_used_at BIGINT;
CREATE INDEX api_keys_retiring ON api_keys(retire_when_idle_ms) WHERE retire_when_idle_ms IS NOT NULL;
CREATE INDEX api_keys_by_rotated_from ON api_keys(rotated_from) WHERE rotated_from IS NOT NULL;
