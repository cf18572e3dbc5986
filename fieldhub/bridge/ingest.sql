-- Named queries of the telemetry ingest path (fieldhub/bridge/ingest.py) and of
-- `fieldhub export` (fieldhub/cli/export.py).

-- name: copy_readings
-- The fast path: a batch that holds no redelivered message goes straight into the hypertable.
COPY readings (time, device_id, metric, value, text_value, seq) FROM STDIN (FORMAT BINARY);

-- name: create_staging
-- Once per connection. A batch that collided with stored rows (a redelivery after a crash or
-- an outage) is replayed through this table and INSERT ... ON CONFLICT DO NOTHING.
CREATE TEMP TABLE IF NOT EXISTS readings_staging (
    time timestamptz NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    value double precision,
    text_value text,
    seq bigint
) ON COMMIT DELETE ROWS;

-- name: copy_staging
COPY readings_staging (time, device_id, metric, value, text_value, seq) FROM STDIN (FORMAT BINARY);

-- name: insert_from_staging
INSERT INTO readings (time, device_id, metric, value, text_value, seq)
SELECT time, device_id, metric, value, text_value, seq FROM readings_staging
ON CONFLICT DO NOTHING;

-- name: all_devices
SELECT device_id, enabled FROM devices;

-- name: lookup_devices
SELECT device_id, enabled FROM devices WHERE device_id = ANY(%(device_ids)s::text[]);

-- name: upsert_latest_values
-- One row per (device, metric): the newest of the batch. Sorted so that two bridges always
-- lock rows in the same order and cannot deadlock each other.
INSERT INTO latest_values AS lv (device_id, metric, time, value)
SELECT d, m, to_timestamp(t), v::jsonb
FROM unnest(%(devices)s::text[], %(metrics)s::text[], %(times)s::float8[], %(values)s::text[])
     AS u(d, m, t, v)
ORDER BY d, m
ON CONFLICT (device_id, metric) DO UPDATE SET time = excluded.time, value = excluded.value
WHERE excluded.time >= lv.time;

-- name: mark_seen
-- Devices that only sent telemetry in this batch: online, last seen now. Those that were not
-- online before (or never seen) flip, get a presence event and a `presence` notification.
-- `prev` reads the snapshot from before the upsert, which is what makes the flip visible.
WITH seen AS (
    SELECT d, to_timestamp(t) AS t
    FROM unnest(%(devices)s::text[], %(times)s::float8[]) AS u(d, t)
    ORDER BY d
), prev AS (
    SELECT device_id, online FROM device_state WHERE device_id = ANY(%(devices)s::text[])
), up AS (
    INSERT INTO device_state AS s (device_id, online, last_seen, status_changed)
    SELECT d, true, t, now() FROM seen
    ON CONFLICT (device_id) DO UPDATE
        SET online = true,
            last_seen = greatest(s.last_seen, excluded.last_seen),
            status_changed = CASE WHEN s.online THEN s.status_changed ELSE now() END
    RETURNING s.device_id
), flipped AS (
    SELECT up.device_id FROM up LEFT JOIN prev USING (device_id) WHERE prev.online IS NOT TRUE
), events AS (
    INSERT INTO presence_events (device_id, online, source)
    SELECT device_id, true, 'telemetry' FROM flipped
)
SELECT device_id, pg_notify('presence', device_id || ' online') FROM flipped;

-- name: lock_device_state
SELECT device_id, online FROM device_state
WHERE device_id = ANY(%(device_ids)s::text[])
ORDER BY device_id
FOR UPDATE;

-- name: set_presence
INSERT INTO device_state AS s (device_id, online, last_seen, status_changed)
SELECT d, o, to_timestamp(t), CASE WHEN c THEN now() END
FROM unnest(%(devices)s::text[], %(online)s::bool[], %(times)s::float8[], %(changed)s::bool[])
     AS u(d, o, t, c)
ORDER BY d
ON CONFLICT (device_id) DO UPDATE
    SET online = excluded.online,
        last_seen = greatest(s.last_seen, excluded.last_seen),
        status_changed = coalesce(excluded.status_changed, s.status_changed);

-- name: insert_presence_events
WITH ev AS (
    SELECT d, o, to_timestamp(t) AS t, src
    FROM unnest(%(devices)s::text[], %(online)s::bool[], %(times)s::float8[], %(sources)s::text[])
         AS u(d, o, t, src)
), ins AS (
    INSERT INTO presence_events (device_id, time, online, source) SELECT d, t, o, src FROM ev
)
SELECT pg_notify('presence', d || CASE WHEN o THEN ' online' ELSE ' offline' END) FROM ev;

-- name: copy_dead_letters
COPY dead_letters (received_at, device_id, topic, reason, detail, payload) FROM STDIN;

-- name: notify_telemetry
SELECT pg_notify('telemetry', p) FROM unnest(%(payloads)s::text[]) AS p;

-- name: export_readings
-- `fieldhub export`: one device's readings in time order; the metric's JSON type (from
-- latest_values) tells booleans from numbers, since both are stored in `value`.
SELECT r.time, r.metric, r.value, r.text_value, r.seq,
       jsonb_typeof(lv.value) = 'boolean' AS is_bool
FROM readings r
LEFT JOIN latest_values lv ON lv.device_id = r.device_id AND lv.metric = r.metric
WHERE r.device_id = %(device_id)s
  AND (%(from)s::timestamptz IS NULL OR r.time >= %(from)s)
  AND (%(to)s::timestamptz IS NULL OR r.time < %(to)s)
ORDER BY r.time, r.metric;
