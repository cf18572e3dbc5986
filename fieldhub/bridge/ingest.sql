-- Named queries of the telemetry ingest path (fieldhub/bridge/ingest.py). Readings,
-- latest_values, mark_seen and notify_telemetry are fieldhub/core/readings.sql's (shared with
-- HTTP ingest). Everything here is keyed by the
-- device key the bridge attributed each message to (docs/devices.md, "Device keys").

-- name: all_devices
SELECT device_id, device_key, enabled FROM devices;

-- name: lookup_devices
SELECT device_id, device_key, enabled FROM devices WHERE device_id = ANY(%(device_ids)s::text[]);

-- name: lock_device_state
-- In key order, like every writer of device_state, so two bridges cannot deadlock.
SELECT device_key, online FROM device_state
WHERE device_key = ANY(%(keys)s::int8[])
ORDER BY device_key
FOR UPDATE;

-- name: set_presence
INSERT INTO device_state AS s (device_key, online, last_seen, status_changed)
SELECT k, o, to_timestamp(t), CASE WHEN c THEN now() END
FROM unnest(%(keys)s::int8[], %(online)s::bool[], %(times)s::float8[], %(changed)s::bool[])
     AS u(k, o, t, c)
ORDER BY k
ON CONFLICT (device_key) DO UPDATE
    SET online = excluded.online,
        last_seen = greatest(s.last_seen, excluded.last_seen),
        status_changed = coalesce(excluded.status_changed, s.status_changed);

-- name: insert_presence_events
WITH ev AS (
    SELECT k, o, to_timestamp(t) AS t, src
    FROM unnest(%(keys)s::int8[], %(online)s::bool[], %(times)s::float8[], %(sources)s::text[])
         AS u(k, o, t, src)
), ins AS (
    INSERT INTO presence_events (device_key, time, online, source) SELECT k, t, o, src FROM ev
)
SELECT pg_notify('presence', k || CASE WHEN o THEN ' online' ELSE ' offline' END) FROM ev;

-- name: copy_dead_letters
COPY dead_letters (received_at, device_id, device_key, topic, reason, detail, payload) FROM STDIN;
