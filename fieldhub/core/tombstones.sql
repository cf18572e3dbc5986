-- Named queries of deleted devices' tombstones (fieldhub/core/tombstones.py).

-- name: delete_device
-- One statement, so the tombstone is written in the delete's own transaction and the command
-- ids are read from the snapshot before the cascade removes them. Locks only the device row
-- and the registry-level rows that cascade from it (latest values, state, presence, commands,
-- alerts, twin); readings, rollups and dead letters are left to the purge job, so the bridges
-- never wait on this for more than the row locks of the one device.
WITH gone AS (
    DELETE FROM devices WHERE device_id = %(device_id)s
    RETURNING device_id, device_key, org_id
), tomb AS (
    INSERT INTO device_tombstones (device_key, device_id, org_id, command_ids)
    SELECT g.device_key, g.device_id, g.org_id,
           coalesce((SELECT array_agg(c.id ORDER BY c.created_at, c.id) FROM commands c
                     WHERE c.device_id = g.device_id AND NOT c.retained_cleared), '{}')
    FROM gone g
    RETURNING device_key, device_id
), brokers AS (
    INSERT INTO tombstone_brokers (device_key, broker, device_id)
    SELECT t.device_key, b.broker, t.device_id
    FROM tomb t, unnest(%(brokers)s::text[]) AS b(broker)
)
SELECT device_key, device_id FROM tomb;

-- name: pending_for_id
-- Every broker row of this id not done yet, oldest tombstone first, with the bridge sessions
-- of that broker (seen within the session expiry) that have not passed its marker.
SELECT t.device_key, t.deleted_at, b.broker, b.cut_off_at, b.retained_cleared_at, b.drained_at,
       b.session_cleared_at, b.updated_at,
       coalesce((SELECT array_agg(s.session ORDER BY s.session) FROM bridge_sessions s
                 WHERE s.broker = b.broker
                   AND s.seen_at > now() - make_interval(secs => %(session_expiry_s)s)
                   AND NOT EXISTS (SELECT 1 FROM tombstone_passes p
                                   WHERE p.device_key = b.device_key AND p.broker = b.broker
                                     AND p.session = s.session)), '{}') AS sessions_behind
FROM tombstone_brokers b
JOIN device_tombstones t ON t.device_key = b.device_key
WHERE b.device_id = %(device_id)s AND b.session_cleared_at IS NULL
ORDER BY t.deleted_at, b.broker;

-- name: pending_ids
-- Ids with a pending tombstone on this broker, and whether this bridge session has passed its
-- marker: the bridge resolves the id to "deleted" until it has. Served by
-- tombstone_brokers_open.
SELECT b.device_id, b.device_key,
       EXISTS (SELECT 1 FROM tombstone_passes p
               WHERE p.device_key = b.device_key AND p.broker = b.broker
                 AND p.session = %(session)s) AS passed
FROM tombstone_brokers b
WHERE b.session_cleared_at IS NULL AND b.broker = %(broker)s;

-- name: to_cut_off
-- Rows of this broker whose old device the render just left out; confirmed after the reload.
SELECT device_key FROM tombstone_brokers
WHERE broker = %(broker)s AND cut_off_at IS NULL;

-- name: with_certificates
-- Of these cut-off candidates, the devices that ever had a certificate: the password file does
-- not keep them out (their listener never reads it), so auth-sync ends their connection too.
SELECT DISTINCT b.device_key, b.device_id
FROM tombstone_brokers b JOIN device_certificates c ON c.device_key = b.device_key
WHERE b.broker = %(broker)s AND b.device_key = ANY(%(keys)s::bigint[]);

-- name: mark_cut_off
UPDATE tombstone_brokers SET cut_off_at = now(), updated_at = now()
WHERE broker = %(broker)s AND device_key = ANY(%(keys)s::bigint[]) AND cut_off_at IS NULL;

-- name: to_clear
-- Cut off, retained topics not cleared yet: the dispatcher of this broker works these off.
SELECT b.device_key, b.device_id, t.command_ids
FROM tombstone_brokers b JOIN device_tombstones t ON t.device_key = b.device_key
WHERE b.broker = %(broker)s AND b.cut_off_at IS NOT NULL AND b.retained_cleared_at IS NULL
ORDER BY t.deleted_at
LIMIT %(limit)s;

-- name: recently_cleared
-- Cleared on this broker within the window: cleared again after a reconnect to the broker.
SELECT b.device_key, b.device_id, t.command_ids
FROM tombstone_brokers b JOIN device_tombstones t ON t.device_key = b.device_key
WHERE b.broker = %(broker)s
  AND b.retained_cleared_at > now() - make_interval(secs => %(window_s)s)
ORDER BY b.retained_cleared_at;

-- name: mark_retained_cleared
UPDATE tombstone_brokers SET retained_cleared_at = now(), updated_at = now()
WHERE broker = %(broker)s AND device_key = %(device_key)s AND retained_cleared_at IS NULL;

-- name: to_remark
-- Cleared, not drained: the marker is sent again (the dispatcher, at most every
-- MARKER_RESEND_S). A bridge whose session was lost or started afresh, or a broker that lost
-- its queue in a crash, would otherwise never see it. Sent later it is still behind every
-- message of the old device, which was cut off before the first one.
SELECT device_key FROM tombstone_brokers
WHERE broker = %(broker)s AND retained_cleared_at IS NOT NULL AND drained_at IS NULL
ORDER BY device_key
LIMIT %(limit)s;

-- name: stuck
-- Rows of this broker that have not moved for a while: logged by auth-sync with what they
-- wait for.
SELECT t.device_id, b.device_key, b.cut_off_at, b.retained_cleared_at, b.drained_at,
       b.session_cleared_at, extract(epoch FROM now() - b.updated_at) AS waiting_s
FROM tombstone_brokers b JOIN device_tombstones t ON t.device_key = b.device_key
WHERE b.broker = %(broker)s AND b.session_cleared_at IS NULL
  AND b.updated_at < now() - make_interval(secs => %(older_than_s)s)
ORDER BY b.updated_at
LIMIT 20;

-- name: record_pass
-- In the bridge's batch transaction that commits the marker; a redelivered marker is a no-op.
-- A marker of a tombstone this broker no longer tracks (purged, another deployment) is ignored.
INSERT INTO tombstone_passes (device_key, broker, session)
SELECT %(device_key)s, %(broker)s, %(session)s
WHERE EXISTS (SELECT 1 FROM tombstone_brokers
              WHERE device_key = %(device_key)s AND broker = %(broker)s)
ON CONFLICT DO NOTHING;

-- name: touch_bridge_session
INSERT INTO bridge_sessions (broker, session) VALUES (%(broker)s, %(session)s)
ON CONFLICT (broker, session) DO UPDATE SET seen_at = now();

-- name: mark_drained
-- Cleared, and no bridge session of this broker seen within the session expiry is behind the
-- marker. A session last seen longer ago than that has lost its queue on the broker, so
-- nothing of the old device can come from it any more.
UPDATE tombstone_brokers b SET drained_at = now(), updated_at = now()
WHERE b.broker = %(broker)s AND b.retained_cleared_at IS NOT NULL AND b.drained_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM bridge_sessions s
      WHERE s.broker = b.broker
        AND s.seen_at > now() - make_interval(secs => %(session_expiry_s)s)
        AND NOT EXISTS (SELECT 1 FROM tombstone_passes p
                        WHERE p.device_key = b.device_key AND p.broker = b.broker
                          AND p.session = s.session))
RETURNING b.device_key;

-- name: to_reap
SELECT device_key, device_id FROM tombstone_brokers
WHERE broker = %(broker)s AND drained_at IS NOT NULL AND session_cleared_at IS NULL
ORDER BY device_key;

-- name: mark_session_cleared
UPDATE tombstone_brokers SET session_cleared_at = now(), updated_at = now()
WHERE broker = %(broker)s AND device_key = %(device_key)s AND session_cleared_at IS NULL;

-- name: to_purge
-- Oldest first; a tombstone is purged once, whatever its brokers' progress (the data is
-- unreachable from the moment of the delete).
SELECT device_key FROM device_tombstones WHERE purged_at IS NULL ORDER BY deleted_at LIMIT 1;

-- name: purge_readings
-- A bounded batch: at most `limit` (metric, time) pairs of the key, found through the
-- (device_key, metric, time) prefix of readings_identity; each batch is its own short
-- transaction, so the bridges' inserts (other keys, other rows) never wait on it.
WITH batch AS (
    SELECT metric, time FROM readings WHERE device_key = %(device_key)s LIMIT %(limit)s
)
DELETE FROM readings r USING batch
WHERE r.device_key = %(device_key)s AND r.metric = batch.metric AND r.time = batch.time;

-- name: purge_rollup_1m
WITH batch AS (
    SELECT metric, bucket FROM rollup_1m WHERE device_key = %(device_key)s LIMIT %(limit)s
)
DELETE FROM rollup_1m r USING batch
WHERE r.device_key = %(device_key)s AND r.metric = batch.metric AND r.bucket = batch.bucket;

-- name: purge_rollup_1h
WITH batch AS (
    SELECT metric, bucket FROM rollup_1h WHERE device_key = %(device_key)s LIMIT %(limit)s
)
DELETE FROM rollup_1h r USING batch
WHERE r.device_key = %(device_key)s AND r.metric = batch.metric AND r.bucket = batch.bucket;

-- name: purge_dead_letters
-- Through dead_letters_by_device_key.
WITH batch AS (
    SELECT received_at FROM dead_letters WHERE device_key = %(device_key)s LIMIT %(limit)s
)
DELETE FROM dead_letters l USING batch
WHERE l.device_key = %(device_key)s AND l.received_at = batch.received_at;

-- name: add_purged
-- A run that ran out of time: count what it deleted; the next run goes on with the same key.
UPDATE device_tombstones SET purged_rows = coalesce(purged_rows, 0) + %(rows)s
WHERE device_key = %(device_key)s;

-- name: mark_purged
UPDATE device_tombstones SET purged_at = now(), purged_rows = coalesce(purged_rows, 0) + %(rows)s
WHERE device_key = %(device_key)s;
