-- name: drop_chunks
-- Whole chunks entirely older than the horizon: no row-by-row DELETE, no bloat.
SELECT count(*) AS dropped
FROM drop_chunks(%(table)s::regclass, older_than => make_interval(days => %(days)s))

-- name: prune_job_runs
DELETE FROM job_runs WHERE started_at < now() - make_interval(days => %(days)s) AND outcome <> 'running'

-- name: prune_webhook_deliveries
DELETE FROM webhook_deliveries
WHERE created_at < now() - make_interval(days => %(days)s) AND status <> 'pending'

-- name: prune_ingest_keys
-- HTTP ingest's Idempotency-Keys past their documented retention (docs/devices.md): a retry
-- after that is a new request. Walks ingest_idempotency_by_age.
DELETE FROM ingest_idempotency WHERE created_at < now() - make_interval(hours => %(hours)s)

-- name: mark_silent_offline
-- Devices online by the books whose last message is older than their own timeout. The UPDATE
-- re-checks its WHERE if the bridge touches the row meanwhile, so a device that just spoke
-- is never marked offline by a race.
-- `presence` carries the device key, like the bridge's notifications.
WITH silent AS (
    UPDATE device_state s
    SET online = false, status_changed = now()
    FROM devices d
    WHERE d.device_key = s.device_key
      AND s.online
      AND (s.last_seen IS NULL OR s.last_seen < now() - make_interval(secs => d.offline_after_s))
    RETURNING s.device_key, d.device_id
), events AS (
    INSERT INTO presence_events (device_key, online, source)
    SELECT device_key, false, 'timeout' FROM silent
)
SELECT device_id, pg_notify('presence', device_key || ' offline') FROM silent
