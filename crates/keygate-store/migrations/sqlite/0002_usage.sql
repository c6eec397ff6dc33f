-- Verification counts per key, hour and outcome, written in batches.
CREATE TABLE usage_counts (
    key_id  TEXT NOT NULL,
    bucket  BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, bucket, outcome)
);
CREATE INDEX usage_counts_by_bucket ON usage_counts(bucket);

-- The client addresses a key was used from most recently: JSON [{"ip", "last_seen"}].
ALTER TABLE api_keys ADD COLUMN recent_ips TEXT;
