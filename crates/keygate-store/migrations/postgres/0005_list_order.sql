-- Lists page in (created_at, id) order, over all keys or one account's, and over accounts.
DROP INDEX api_keys_by_account;
CREATE INDEX api_keys_by_account ON api_keys(account_id, created_at, id);
CREATE INDEX api_keys_by_created ON api_keys(created_at, id);
CREATE INDEX accounts_by_created ON accounts(created_at, id);
