-- Readiness checks (fieldhub/core/health_checks.py). Each runs on a connection of its own with a
-- 2 s statement_timeout, at most once every 1.5 s per process; none takes a lock.

-- name: database_answers
SELECT 1 AS ok

-- name: database_writable
-- A replica in recovery, or a primary switched to read-only, cannot take the bridge's writes.
SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' AS writable

-- name: applied_migrations
-- One row with every applied version; compared with the migrations this code ships.
SELECT coalesce(array_agg(version), '{}') AS versions FROM schema_migrations
