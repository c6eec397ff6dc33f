-- PostgreSQL announces key changes with NOTIFY (see postgres.rs); the change table is
-- SQLite's. This step keeps the two backends' migration lists aligned.
SELECT 1;
