-- Data set-up of the analysis benchmarks (fieldhub/bench/analysis.py), in a scratch database.

-- name: create_org
INSERT INTO organisations (name, display_name) VALUES (%(name)s, %(name)s) RETURNING id

-- name: create_devices
INSERT INTO devices (device_id, org_id, password_hash)
SELECT unnest(%(devices)s::text[]), %(org_id)s, 'unused'

-- name: day_of_readings
INSERT INTO readings (time, device_id, metric, value)
SELECT t, d, 'temp', random() * 40
FROM unnest(%(devices)s::text[]) AS d,
     generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 ms',
                     make_interval(secs => %(step)s)) AS t

-- name: latest_of_devices
INSERT INTO latest_values (device_id, metric, time, value)
SELECT d, 'temp', %(time)s, '0' FROM unnest(%(devices)s::text[]) AS d
ON CONFLICT (device_id, metric) DO UPDATE SET time = EXCLUDED.time

-- name: last_minute_of_readings
INSERT INTO readings (time, device_id, metric, value)
SELECT now() - make_interval(secs => s), d, 'temp', 1
FROM unnest(%(devices)s::text[]) AS d, generate_series(0, 50, 10) AS s
ON CONFLICT DO NOTHING

-- name: late_backlog
-- An hour of backlog from a few devices, between their existing readings.
INSERT INTO readings (time, device_id, metric, value)
SELECT %(start)s::timestamptz + make_interval(secs => s + 0.5), d, 'temp', 99
FROM unnest(%(devices)s::text[]) AS d, generate_series(0, 3590, 10) AS s
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
