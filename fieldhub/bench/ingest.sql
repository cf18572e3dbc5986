-- Named queries of `fieldhub bench ingest` (fieldhub/bench/ingest.py).

-- name: new_rows_since
-- The latency probe: rows of the given device keys (what NOTIFY telemetry names) newer than
-- what it has already seen of each (timestamps are whole milliseconds, so half a millisecond
-- absorbs float rounding).
SELECT r.device_key, extract(epoch FROM r.time)::float8 AS t
FROM unnest(%(keys)s::int8[], %(since)s::float8[]) AS u(k, since)
JOIN readings r ON r.device_key = u.k AND r.metric = 'm0' AND r.unit = ''
               AND r.time > to_timestamp(u.since) + interval '0.5 ms';

-- name: count_readings
SELECT count(*) AS n FROM readings;
