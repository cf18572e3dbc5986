-- Named queries of the readings write path (fieldhub/core/readings.py), shared by the bridge
-- and file imports. (time, device_key, metric, unit, seq) is a reading's identity, (value,
-- text_value, is_bool) its content. The COPY column order (time, device_key, seq first) is the
-- encoder's: those three are the same for every value of one reading object, so it builds
-- them once per object and each row costs three byte-string joins.

-- name: copy_readings
-- The fast path: a batch that repeats no stored reading goes straight into the hypertable
-- (TimescaleDB routes rows to chunks). Any reading that exists already fails the whole COPY
-- with a unique violation, and the batch takes the staged path instead.
COPY readings (time, device_key, seq, metric, unit, value, text_value, is_bool)
FROM STDIN (FORMAT BINARY);

-- name: create_staging
-- Once per connection. `ord` is the batch's own number for the message (or import line) a
-- row came from, so a conflict can be traced back to it. Rows live for one transaction.
CREATE TEMP TABLE IF NOT EXISTS readings_staging (
    time       timestamptz NOT NULL,
    device_key bigint NOT NULL,
    metric     text NOT NULL,
    unit       text NOT NULL,
    seq        bigint,
    value      double precision,
    text_value text,
    is_bool    boolean NOT NULL,
    ord        integer NOT NULL
) ON COMMIT DELETE ROWS;

-- name: copy_staging
COPY readings_staging (time, device_key, seq, metric, unit, value, text_value, is_bool, ord)
FROM STDIN (FORMAT BINARY);

-- name: insert_staged
-- What is new goes in, what exists is left alone. Inserted in identity order so that two
-- writers staging overlapping batches (a message redelivered to another bridge) take the
-- index entries in the same order and wait for each other instead of deadlocking; within
-- one identity the earlier message wins (`ord`), as it would have if it had come alone.
INSERT INTO readings (time, device_key, metric, unit, seq, value, text_value, is_bool)
SELECT time, device_key, metric, unit, seq, value, text_value, is_bool
FROM readings_staging
ORDER BY device_key, metric, time, unit, seq, ord
ON CONFLICT DO NOTHING;

-- name: staged_conflicts
-- Only after insert_staged skipped rows: the staged rows whose identity is stored with other
-- content. A staged row that was inserted meets itself (same content) and is not listed; a
-- redelivered copy meets the stored reading (same content): a duplicate, not listed either.
-- The join is an index lookup per staged row (readings_identity's first four columns).
SELECT s.ord, s.metric, s.unit, s.time, s.seq,
       s.value, s.text_value, s.is_bool,
       r.value AS stored_value, r.text_value AS stored_text, r.is_bool AS stored_is_bool
FROM readings_staging s
JOIN readings r ON r.device_key = s.device_key AND r.metric = s.metric AND r.time = s.time
               AND r.unit = s.unit AND r.seq IS NOT DISTINCT FROM s.seq
WHERE (r.value, r.text_value, r.is_bool) IS DISTINCT FROM (s.value, s.text_value, s.is_bool)
ORDER BY s.ord, s.metric, s.time;

-- name: upsert_latest
-- One row per (device, metric, unit): the newest of the batch, kept only if it is not older
-- than what is stored. Sorted so that two writers (bridges, an import) always lock rows in
-- the same order and cannot deadlock each other.
INSERT INTO latest_values AS lv (device_key, metric, unit, time, value)
SELECT k, m, u, to_timestamp(t), v::jsonb
FROM unnest(%(keys)s::int8[], %(metrics)s::text[], %(units)s::text[], %(times)s::float8[],
            %(values)s::text[]) AS x(k, m, u, t, v)
ORDER BY k, m, u
ON CONFLICT (device_key, metric, unit) DO UPDATE SET time = excluded.time, value = excluded.value
WHERE excluded.time >= lv.time;

-- name: mark_seen
-- Devices that only sent telemetry in this batch (or HTTP request): online, last seen now. Those that were not
-- online before (or never seen) flip, get a presence event and a `presence` notification.
-- `prev` reads the snapshot from before the upsert, which is what makes the flip visible.
-- Sorted by key so that two writers (bridges, web workers) lock device_state rows in the same order.
WITH seen AS (
    SELECT k, to_timestamp(t) AS t
    FROM unnest(%(keys)s::int8[], %(times)s::float8[]) AS u(k, t)
    ORDER BY k
), prev AS (
    SELECT device_key, online FROM device_state WHERE device_key = ANY(%(keys)s::int8[])
), up AS (
    INSERT INTO device_state AS s (device_key, online, last_seen, status_changed)
    SELECT k, true, t, now() FROM seen
    ON CONFLICT (device_key) DO UPDATE
        SET online = true,
            last_seen = greatest(s.last_seen, excluded.last_seen),
            status_changed = CASE WHEN s.online THEN s.status_changed ELSE now() END
    RETURNING s.device_key
), flipped AS (
    SELECT up.device_key FROM up LEFT JOIN prev USING (device_key) WHERE prev.online IS NOT TRUE
), events AS (
    INSERT INTO presence_events (device_key, online, source)
    SELECT device_key, true, 'telemetry' FROM flipped
)
SELECT device_key, pg_notify('presence', device_key || ' online') FROM flipped;

-- name: notify_telemetry
-- Device keys, not ids: a listener matches the key it resolved in its viewer's organisation,
-- so a later device with the same id can never be mistaken for this one.
SELECT pg_notify('telemetry', p) FROM unnest(%(payloads)s::text[]) AS p;

-- name: export_readings
-- Every export (`fieldhub export`, the web app's export.csv): one device's readings by its
-- key, optionally one metric (and unit), in time order, then metric, unit and seq, so the
-- output is the same on every run. No lock: a plain MVCC snapshot, read through one
-- server-side cursor so a month of readings is never held in memory.
SELECT time, metric, unit, value, text_value, is_bool, seq
FROM readings
WHERE device_key = %(device_key)s
  AND (%(from)s::timestamptz IS NULL OR time >= %(from)s)
  AND (%(to)s::timestamptz IS NULL OR time < %(to)s)
  AND (%(metric)s::text IS NULL OR metric = %(metric)s)
  AND (%(unit)s::text IS NULL OR unit = %(unit)s)
ORDER BY time, metric, unit, seq;
