-- Keys imported from another system (`keygate import-keys`), one row per imported key.
-- Until its first successful verification the key's api_keys.digest is a placeholder and
-- the legacy hash here is what verifies it; then hash is cleared (upgraded_at set) and
-- api_keys.digest holds keygate's own HMAC digest. The row stays: it tells verification
-- that credentials outside keygate's key format may be keys of this deployment.
CREATE TABLE legacy_keys (
    key_id      TEXT PRIMARY KEY REFERENCES api_keys(id),
    -- bcrypt, sha256, sha512 or plaintext (hashed with keygate's digest on import).
    scheme      TEXT NOT NULL,
    -- bcrypt: the key's first characters (the lookup prefix); sha256/sha512: the digest
    -- in lowercase hex; plaintext: empty.
    lookup      TEXT NOT NULL,
    -- The legacy hash (bcrypt: the modular crypt string; sha: the hex digest); NULL once
    -- upgraded.
    hash        TEXT,
    imported_at INTEGER NOT NULL,
    upgraded_at INTEGER
);
CREATE INDEX legacy_keys_pending ON legacy_keys(lookup) WHERE hash IS NOT NULL;
