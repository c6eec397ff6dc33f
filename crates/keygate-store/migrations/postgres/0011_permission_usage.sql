-- Allowed requests per key, day and the permission they needed (the least-privilege
-- report), written with the usage batch and pruned with the same retention.
CREATE TABLE permission_usage (
    key_id       TEXT NOT NULL,
    bucket       BIGINT NOT NULL,
    permission   TEXT NOT NULL,
    count        BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, bucket, permission)
);
CREATE INDEX permission_usage_by_bucket ON permission_usage(bucket);
