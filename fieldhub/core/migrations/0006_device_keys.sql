-- Device keys and the identity of a reading (issue #11, docs/devices.md "Identity of a reading").
--
-- 1. Every device gets an internal key: immutable, never reused, never shown to tenants.
--    Everything that is a device's *data* (readings, rollups, latest values, presence, dead
--    letters) is keyed by it instead of by the device id. A device id that is deleted and
--    registered again (in another organisation, say) gets a new key, so nothing stored under
--    the old key can ever be read as the new device's: the id is what tenants see, the key is
--    what the data belongs to. Registry-level rows (commands, alerts, alert rules, imports)
--    keep device_id with ON DELETE CASCADE: they die with the device row.
-- 2. A reading is (device_key, metric, unit, time, seq) plus its content (value | text_value,
--    is_bool). The old identity (device_id, metric, time) merged readings that differ only by
--    seq or by SenML unit, and dropped the second in silence. `unit` is '' when the payload has
--    none (plain telemetry); `seq` is NULL when the device sent none, and NULLS NOT DISTINCT
--    makes two NULL seqs equal, so a redelivered message without seq is still one reading.
--    is_bool is stored with the reading (booleans stay in `value` as 1/0, so charts, rollups
--    and alerts work unchanged); exports no longer guess it from latest_values.
--
-- Carrying data over: readings, rollups, latest values, device state and presence events are
-- copied to the new tables joined to the devices that exist. Rows of device ids that no longer
-- exist are dropped: they are exactly the leftovers the issue describes (a later device with
-- the same id would have inherited them). Where an id was deleted and registered again, the
-- old owner's rollups, presence events and dead letters are still here under that id (the
-- registry only ever deleted raw readings), so rows dated before the current device was
-- created are treated as the old owner's:
-- - rollup buckets that begin before the device's creation are not copied; they are
--   recomputed from the device's own raw readings of that time instead (history imported for
--   a device can predate it). Imported history older than the raw retention therefore keeps
--   its rollups only from the device's creation on;
-- - presence events before the creation are dropped; dead letters before it keep their
--   device_id for operators but get no device_key.
-- Raw readings are all copied: registry.delete_device deleted a device's readings with it, so
-- every reading of an existing id belongs to its current device.
--
-- Run with the bridges and the worker stopped (it rewrites every readings chunk); the time it
-- takes grows with the data: roughly that of writing the readings table once more plus
-- building its index.

ALTER TABLE devices ADD COLUMN device_key bigint GENERATED ALWAYS AS IDENTITY UNIQUE;

-- -- readings -----------------------------------------------------------------------------
CREATE TABLE readings_keyed (
    time       timestamptz NOT NULL,
    device_key bigint NOT NULL,
    metric     text NOT NULL,
    unit       text NOT NULL DEFAULT '',
    seq        bigint,
    value      double precision,
    text_value text,
    is_bool    boolean NOT NULL DEFAULT false,
    CONSTRAINT readings_value_or_text CHECK ((value IS NULL) <> (text_value IS NULL))
);
-- No foreign key to devices: a delete must not cascade through a hypertable (it would hold
-- the bridge up); a deleted key's readings are unreachable at once and purged separately.
SELECT create_hypertable('readings_keyed', by_range('time', INTERVAL '1 day'),
                         create_default_indexes => false);

-- Before 0006 booleans were told from numbers only by the metric's latest JSON value; that is
-- the best knowledge there is of the old rows.
INSERT INTO readings_keyed (time, device_key, metric, unit, seq, value, text_value, is_bool)
SELECT r.time, d.device_key, r.metric, '', r.seq, r.value, r.text_value,
       coalesce(jsonb_typeof(lv.value) = 'boolean', false)
FROM readings r
JOIN devices d ON d.device_id = r.device_id
LEFT JOIN latest_values lv ON lv.device_id = r.device_id AND lv.metric = r.metric;

DROP TABLE readings;
ALTER TABLE readings_keyed RENAME TO readings;
-- Built after the copy (one sort instead of a million index insertions). The (device_key,
-- metric, time) prefix serves every history, rollup and alert query; a redelivered message
-- yields the same keys and is absorbed, a different content under the same keys is a conflict.
CREATE UNIQUE INDEX readings_identity ON readings (device_key, metric, time, unit, seq)
    NULLS NOT DISTINCT;

-- -- latest values, device state, presence ------------------------------------------------
CREATE TABLE latest_values_keyed (
    device_key bigint NOT NULL REFERENCES devices (device_key) ON DELETE CASCADE,
    metric     text NOT NULL,
    unit       text NOT NULL DEFAULT '',
    time       timestamptz NOT NULL,
    value      jsonb NOT NULL,
    PRIMARY KEY (device_key, metric, unit)
);
INSERT INTO latest_values_keyed (device_key, metric, unit, time, value)
SELECT d.device_key, lv.metric, '', lv.time, lv.value
FROM latest_values lv JOIN devices d ON d.device_id = lv.device_id;
DROP TABLE latest_values;
ALTER TABLE latest_values_keyed RENAME TO latest_values;
ALTER TABLE latest_values RENAME CONSTRAINT latest_values_keyed_pkey TO latest_values_pkey;
ALTER TABLE latest_values RENAME CONSTRAINT latest_values_keyed_device_key_fkey
    TO latest_values_device_key_fkey;

CREATE TABLE device_state_keyed (
    device_key     bigint PRIMARY KEY REFERENCES devices (device_key) ON DELETE CASCADE,
    online         boolean NOT NULL DEFAULT false,
    last_seen      timestamptz,        -- last telemetry or status message
    status_changed timestamptz          -- last time `online` flipped
);
INSERT INTO device_state_keyed (device_key, online, last_seen, status_changed)
SELECT d.device_key, s.online, s.last_seen, s.status_changed
FROM device_state s JOIN devices d ON d.device_id = s.device_id;
DROP TABLE device_state;
ALTER TABLE device_state_keyed RENAME TO device_state;
ALTER TABLE device_state RENAME CONSTRAINT device_state_keyed_pkey TO device_state_pkey;
ALTER TABLE device_state RENAME CONSTRAINT device_state_keyed_device_key_fkey
    TO device_state_device_key_fkey;

CREATE TABLE presence_events_keyed (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    device_key bigint NOT NULL REFERENCES devices (device_key) ON DELETE CASCADE,
    time       timestamptz NOT NULL DEFAULT now(),
    online     boolean NOT NULL,
    -- 'status': the device's status topic (its own word or its Last Will);
    -- 'telemetry': a message after it was marked offline; 'timeout': silence (worker).
    source     text NOT NULL CHECK (source IN ('status', 'telemetry', 'timeout')),
    PRIMARY KEY (device_key, time, id)
);
INSERT INTO presence_events_keyed (device_key, time, online, source)
SELECT d.device_key, p.time, p.online, p.source
FROM presence_events p JOIN devices d ON d.device_id = p.device_id
WHERE p.time >= d.created_at
ORDER BY p.id;
DROP TABLE presence_events;
ALTER TABLE presence_events_keyed RENAME TO presence_events;
ALTER TABLE presence_events RENAME CONSTRAINT presence_events_keyed_pkey TO presence_events_pkey;
ALTER TABLE presence_events RENAME CONSTRAINT presence_events_keyed_device_key_fkey
    TO presence_events_device_key_fkey;

-- -- rollups ------------------------------------------------------------------------------
CREATE TABLE rollup_1m_keyed (
    bucket     timestamptz NOT NULL,
    device_key bigint NOT NULL,
    metric     text NOT NULL,
    unit       text NOT NULL DEFAULT '',
    min        double precision,
    max        double precision,
    avg        double precision,
    count      bigint NOT NULL,
    last       double precision,
    last_time  timestamptz,
    PRIMARY KEY (device_key, metric, unit, bucket)
);
SELECT create_hypertable('rollup_1m_keyed', by_range('bucket', INTERVAL '7 days'),
                         create_default_indexes => false);
INSERT INTO rollup_1m_keyed (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT r.bucket, d.device_key, r.metric, '', r.min, r.max, r.avg, r.count, r.last, r.last_time
FROM rollup_1m r JOIN devices d ON d.device_id = r.device_id
WHERE r.bucket >= time_bucket('1 minute', d.created_at);
-- Minutes before the device existed, from its own raw readings only (see the top).
INSERT INTO rollup_1m_keyed (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT time_bucket('1 minute', r.time), r.device_key, r.metric, r.unit,
       min(r.value), max(r.value), avg(r.value), count(*), last(r.value, r.time), max(r.time)
FROM readings r JOIN devices d ON d.device_key = r.device_key
WHERE r.time < time_bucket('1 minute', d.created_at) AND r.value IS NOT NULL
GROUP BY 1, 2, 3, 4;
DROP TABLE rollup_1m;
ALTER TABLE rollup_1m_keyed RENAME TO rollup_1m;
ALTER TABLE rollup_1m RENAME CONSTRAINT rollup_1m_keyed_pkey TO rollup_1m_pkey;

CREATE TABLE rollup_1h_keyed (
    bucket     timestamptz NOT NULL,
    device_key bigint NOT NULL,
    metric     text NOT NULL,
    unit       text NOT NULL DEFAULT '',
    min        double precision,
    max        double precision,
    avg        double precision,
    count      bigint NOT NULL,
    last       double precision,
    last_time  timestamptz,
    PRIMARY KEY (device_key, metric, unit, bucket)
);
SELECT create_hypertable('rollup_1h_keyed', by_range('bucket', INTERVAL '90 days'),
                         create_default_indexes => false);
INSERT INTO rollup_1h_keyed (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT r.bucket, d.device_key, r.metric, '', r.min, r.max, r.avg, r.count, r.last, r.last_time
FROM rollup_1h r JOIN devices d ON d.device_id = r.device_id
WHERE r.bucket >= time_bucket('1 hour', d.created_at);
INSERT INTO rollup_1h_keyed (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT time_bucket('1 hour', m.bucket), m.device_key, m.metric, m.unit,
       min(m.min), max(m.max), sum(m.avg * m.count) / sum(m.count), sum(m.count)::bigint,
       last(m.last, m.last_time), max(m.last_time)
FROM rollup_1m m JOIN devices d ON d.device_key = m.device_key
WHERE m.bucket < time_bucket('1 hour', d.created_at)
GROUP BY 1, 2, 3, 4;
DROP TABLE rollup_1h;
ALTER TABLE rollup_1h_keyed RENAME TO rollup_1h;
ALTER TABLE rollup_1h RENAME CONSTRAINT rollup_1h_keyed_pkey TO rollup_1h_pkey;

-- The rollup job remembers insert counters per readings chunk; the chunks are new.
UPDATE job_state SET state = state - 'chunk_inserts' - 'hot_checked_at' WHERE job = 'rollups';

-- -- dead letters -------------------------------------------------------------------------
-- device_id stays (operators search by it, and a message of an unknown id has no key);
-- device_key says which device a letter belongs to, so a device's dead letters are never
-- shown to a later device of the same id. NULL: unknown, or deleted when it arrived.
ALTER TABLE dead_letters ADD COLUMN device_key bigint;
UPDATE dead_letters l SET device_key = d.device_key
FROM devices d
WHERE d.device_id = l.device_id AND l.received_at >= d.created_at;
CREATE INDEX dead_letters_by_device_key ON dead_letters (device_key, received_at DESC)
    WHERE device_key IS NOT NULL;
