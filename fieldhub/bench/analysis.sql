-- Data set-up of the analysis benchmarks (fieldhub/bench/analysis.py), in a scratch database.
-- Devices are named by id and their data written under their keys (`keys_of`).

-- name: create_org
INSERT INTO organisations (name, display_name) VALUES (%(name)s, %(name)s) RETURNING id

-- name: create_devices
INSERT INTO devices (device_id, org_id, password_hash)
SELECT unnest(%(devices)s::text[]), %(org_id)s, 'unused'

-- name: day_of_readings
INSERT INTO readings (time, device_key, metric, value)
SELECT t, k, 'temp', random() * 40
FROM (SELECT device_key FROM devices WHERE device_id = ANY(%(devices)s::text[])) AS keys_of (k),
     generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 ms',
                     make_interval(secs => %(step)s)) AS t

-- name: latest_of_devices
INSERT INTO latest_values (device_key, metric, time, value)
SELECT device_key, 'temp', %(time)s, '0' FROM devices WHERE device_id = ANY(%(devices)s::text[])
ON CONFLICT (device_key, metric, unit) DO UPDATE SET time = EXCLUDED.time

-- name: last_minute_of_readings
INSERT INTO readings (time, device_key, metric, value)
SELECT now() - make_interval(secs => s), k, 'temp', 1
FROM (SELECT device_key FROM devices WHERE device_id = ANY(%(devices)s::text[])) AS keys_of (k),
     generate_series(0, 50, 10) AS s
ON CONFLICT DO NOTHING

-- name: late_backlog
-- An hour of backlog from a few devices, between their existing readings.
INSERT INTO readings (time, device_key, metric, value)
SELECT %(start)s::timestamptz + make_interval(secs => s + 0.5), k, 'temp', 99
FROM (SELECT device_key FROM devices WHERE device_id = ANY(%(devices)s::text[])) AS keys_of (k),
     generate_series(0, 3590, 10) AS s
ON CONFLICT DO NOTHING

-- name: analyze_readings
ANALYZE readings

-- name: count_readings
SELECT count(*) AS n FROM readings

-- name: rolled_up_readings
SELECT coalesce(sum(count), 0) AS n FROM rollup_1m

-- name: touch_latest
-- What the bridge does with every batch: the latest reading time per device and metric.
UPDATE latest_values SET time = now()
