-- Rollups are recomputed from raw rows per bucket and upserted, so a bucket is always the
-- aggregate of every raw row in it, however often or late it is recomputed. Text readings
-- (value IS NULL) are not rolled up. `last` is TimescaleDB's last(value, time). A series is
-- (device_key, metric, unit): readings of one metric in different units are never mixed.

-- name: readings_span
-- The whole range of raw data by chunk bounds: readings has no index on time alone.
SELECT min(range_start) AS first_chunk, now() AS now
FROM timescaledb_information.chunks
WHERE hypertable_schema = 'public' AND hypertable_name = 'readings'

-- name: stage_1m_scan
-- A large range (first run, catching up): one sequential pass over the chunks. Aggregating
-- into a temporary table first lets PostgreSQL use parallel workers (an INSERT ... SELECT
-- cannot) and halves the time of big recomputes; stage_1m_upsert then writes the result.
CREATE TEMPORARY TABLE rollup_stage ON COMMIT DROP AS
SELECT time_bucket('1 minute', time) AS bucket, device_key, metric, unit,
       min(value) AS min, max(value) AS max, avg(value) AS avg, count(*) AS count,
       last(value, time) AS last, max(time) AS last_time
FROM readings
WHERE time >= %(start)s AND time < %(end)s AND value IS NOT NULL
GROUP BY 1, 2, 3, 4

-- name: rollup_1m_recent
-- The incremental pass: only (device, metric, unit) series whose latest reading is in the
-- range, each read by an index range scan of readings_identity (its (device_key, metric,
-- time) prefix) instead of a scan of today's whole chunk.
INSERT INTO rollup_1m AS r (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT time_bucket('1 minute', rd.time), rd.device_key, rd.metric, rd.unit,
       min(rd.value), max(rd.value), avg(rd.value), count(*), last(rd.value, rd.time), max(rd.time)
FROM latest_values lv
JOIN readings rd ON rd.device_key = lv.device_key AND rd.metric = lv.metric
                AND rd.time >= %(start)s AND rd.time < %(end)s AND rd.unit = lv.unit
WHERE lv.time >= %(start)s AND rd.value IS NOT NULL
GROUP BY 1, 2, 3, 4
ON CONFLICT (device_key, metric, unit, bucket) DO UPDATE
SET min = EXCLUDED.min, max = EXCLUDED.max, avg = EXCLUDED.avg, count = EXCLUDED.count,
    last = EXCLUDED.last, last_time = EXCLUDED.last_time
WHERE (r.count, r.last_time, r.min, r.max, r.avg, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.last_time, EXCLUDED.min, EXCLUDED.max, EXCLUDED.avg, EXCLUDED.last)

-- name: stage_1m_devices
-- Given ranges of given devices (late data, imports), staged like stage_1m_scan.
CREATE TEMPORARY TABLE rollup_stage ON COMMIT DROP AS
SELECT time_bucket('1 minute', rd.time) AS bucket, rd.device_key, rd.metric, rd.unit,
       min(rd.value) AS min, max(rd.value) AS max, avg(rd.value) AS avg, count(*) AS count,
       last(rd.value, rd.time) AS last, max(rd.time) AS last_time
FROM unnest(%(keys)s::int8[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
     AS want (device_key, start_time, end_time)
JOIN readings rd ON rd.device_key = want.device_key
                AND rd.time >= want.start_time AND rd.time < want.end_time
WHERE rd.value IS NOT NULL
GROUP BY 1, 2, 3, 4

-- name: stage_1m_upsert
INSERT INTO rollup_1m AS r (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT bucket, device_key, metric, unit, min, max, avg, count, last, last_time FROM rollup_stage
ON CONFLICT (device_key, metric, unit, bucket) DO UPDATE
SET min = EXCLUDED.min, max = EXCLUDED.max, avg = EXCLUDED.avg, count = EXCLUDED.count,
    last = EXCLUDED.last, last_time = EXCLUDED.last_time
WHERE (r.count, r.last_time, r.min, r.max, r.avg, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.last_time, EXCLUDED.min, EXCLUDED.max, EXCLUDED.avg, EXCLUDED.last)

-- name: rollup_1h_scan
-- Hours from their minutes; the average is weighted by each minute's count.
INSERT INTO rollup_1h AS r (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT time_bucket('1 hour', bucket), device_key, metric, unit,
       min(min), max(max), sum(avg * count) / sum(count), sum(count)::bigint,
       last(last, last_time), max(last_time)
FROM rollup_1m
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(keys)s::int8[] IS NULL OR device_key = ANY(%(keys)s::int8[]))
GROUP BY 1, 2, 3, 4
ON CONFLICT (device_key, metric, unit, bucket) DO UPDATE
SET min = EXCLUDED.min, max = EXCLUDED.max, avg = EXCLUDED.avg, count = EXCLUDED.count,
    last = EXCLUDED.last, last_time = EXCLUDED.last_time
WHERE (r.count, r.last_time, r.min, r.max, r.avg, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.last_time, EXCLUDED.min, EXCLUDED.max, EXCLUDED.avg, EXCLUDED.last)

-- name: rollup_1h_devices
INSERT INTO rollup_1h AS r (bucket, device_key, metric, unit, min, max, avg, count, last, last_time)
SELECT time_bucket('1 hour', m.bucket), m.device_key, m.metric, m.unit,
       min(m.min), max(m.max), sum(m.avg * m.count) / sum(m.count), sum(m.count)::bigint,
       last(m.last, m.last_time), max(m.last_time)
FROM unnest(%(keys)s::int8[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
     AS want (device_key, start_time, end_time)
JOIN rollup_1m m ON m.device_key = want.device_key
                AND m.bucket >= want.start_time AND m.bucket < want.end_time
GROUP BY 1, 2, 3, 4
ON CONFLICT (device_key, metric, unit, bucket) DO UPDATE
SET min = EXCLUDED.min, max = EXCLUDED.max, avg = EXCLUDED.avg, count = EXCLUDED.count,
    last = EXCLUDED.last, last_time = EXCLUDED.last_time
WHERE (r.count, r.last_time, r.min, r.max, r.avg, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.last_time, EXCLUDED.min, EXCLUDED.max, EXCLUDED.avg, EXCLUDED.last)

-- name: readings_chunk_inserts
-- Rows ever inserted into each chunk of readings, from the statistics collector: a chunk whose
-- counter moved since the last pass may hold late data. Cheap: one row per chunk.
SELECT c.chunk_name, c.range_start, c.range_end, coalesce(s.n_tup_ins, 0) AS inserted
FROM timescaledb_information.chunks c
LEFT JOIN pg_stat_user_tables s ON s.schemaname = c.chunk_schema AND s.relname = c.chunk_name
WHERE c.hypertable_schema = 'public' AND c.hypertable_name = 'readings'
ORDER BY c.range_start

-- name: totals_differ
-- The cheap first look at a changed chunk: one count each side, no grouping. Only when the
-- totals differ is it worth finding the hours (stale_hours).
SELECT (SELECT count(*) FROM readings
        WHERE time >= %(start)s AND time < %(end)s AND value IS NOT NULL)
       IS DISTINCT FROM
       (SELECT coalesce(sum(count), 0) FROM rollup_1m
        WHERE bucket >= %(start)s AND bucket < %(end)s) AS differ

-- name: stale_hours
-- Hours whose raw row count differs from what the 1-minute rollups hold: late rows landed
-- there. Both sides cover exactly [start, end), which is minute-aligned.
WITH raw AS (
    SELECT device_key, metric, unit, time_bucket('1 hour', time) AS hour, count(*) AS n
    FROM readings
    WHERE time >= %(start)s AND time < %(end)s AND value IS NOT NULL
    GROUP BY 1, 2, 3, 4
), rolled AS (
    SELECT device_key, metric, unit, time_bucket('1 hour', bucket) AS hour, sum(count) AS n
    FROM rollup_1m
    WHERE bucket >= %(start)s AND bucket < %(end)s
    GROUP BY 1, 2, 3, 4
)
SELECT DISTINCT raw.device_key, raw.hour
FROM raw
LEFT JOIN rolled USING (device_key, metric, unit, hour)
WHERE rolled.n IS DISTINCT FROM raw.n
ORDER BY 1, 2

-- name: sort_memory
-- Recomputing many buckets sorts up to millions of rows; spilling that to disk triples the
-- time. Only for this transaction.
SET LOCAL work_mem = '128MB'
