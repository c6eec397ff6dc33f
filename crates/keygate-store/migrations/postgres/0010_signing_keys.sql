-- Ed25519 keys that sign short-lived tokens. One row per generation: the newest signs,
-- older ones stay published until the tokens they signed have expired. `private_key` is
-- sealed (ChaCha20-Poly1305 under a key derived from the pepper), never plain.
CREATE TABLE signing_keys (
    generation  BIGINT PRIMARY KEY,
    kid         TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
