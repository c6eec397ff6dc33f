-- Key changes, for the other processes that cache keys from this file (keygate-tower's
-- embedded mode, a second server, the CLI's writes heard by a running server): a commit
-- that changes keys adds one row with their digests, comma-separated. Readers poll by
-- `seq`; rows older than an hour are pruned.
CREATE TABLE key_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    digests TEXT NOT NULL,
    changed_at INTEGER NOT NULL
);
