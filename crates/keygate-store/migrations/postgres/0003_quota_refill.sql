-- When a quota with a refill last refilled (unix ms).
ALTER TABLE api_keys ADD COLUMN quota_refilled_at BIGINT;
