-- Named queries of the web app. Every query that touches tenant data takes %(org_id)s:
-- NULL for an operator (all organisations), otherwise the user's organisation. A device's
-- data (readings, rollups, latest values, presence) is read by its device_key, which the
-- request resolved from the device id within that scope first (get_device): an id that was
-- deleted and registered again has a new key, so the old device's data is never reached.

-- name: count_devices
SELECT count(*) AS n
FROM devices d
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s)
  AND (%(like)s::text IS NULL OR d.device_id ILIKE %(like)s OR d.display_name ILIKE %(like)s)
  AND (%(labels)s::jsonb IS NULL OR d.labels @> %(labels)s::jsonb)
  AND (%(online)s::boolean IS NULL OR coalesce(s.online, false) = %(online)s);

-- name: devices_in_scope
-- In device id order (unique): the API pages by keyset (`after`, the last id of the previous
-- page, OFFSET 0); the pages' numbered pager uses OFFSET, which is fine for a person's page
-- numbers but not for a program walking every device.
SELECT d.device_id, d.device_key, d.org_id, o.name AS org, d.display_name, d.labels, d.enabled,
       d.broker, d.created_at, d.gateway_id, coalesce(s.online, false) AS online, s.last_seen
FROM devices d
JOIN organisations o ON o.id = d.org_id
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s)
  AND (%(like)s::text IS NULL OR d.device_id ILIKE %(like)s OR d.display_name ILIKE %(like)s)
  AND (%(labels)s::jsonb IS NULL OR d.labels @> %(labels)s::jsonb)
  AND (%(online)s::boolean IS NULL OR coalesce(s.online, false) = %(online)s)
  AND (%(after)s::text IS NULL OR d.device_id > %(after)s)
ORDER BY d.device_id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: devices_by_id
SELECT d.device_id, d.device_key, d.enabled, coalesce(s.online, false) AS online, s.last_seen
FROM devices d
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE d.device_id = ANY(%(device_ids)s::text[])
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s)
ORDER BY d.device_id;

-- name: label_pairs
-- The label filter's suggestions: the most common key=value pairs of the organisation.
SELECT l.key, l.value, count(*) AS devices
FROM devices d, jsonb_each_text(d.labels) AS l(key, value)
WHERE (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s)
GROUP BY l.key, l.value
ORDER BY count(*) DESC, l.key, l.value
LIMIT 50;

-- name: latest_for_devices
SELECT device_key, metric, unit, time, value
FROM latest_values
WHERE device_key = ANY(%(keys)s::int8[])
ORDER BY device_key, metric, unit;

-- name: metric_types
-- The JSON type of each of a device's series ('number', 'boolean', 'string'), for what a
-- chart says of its values. A primary-key prefix read of a handful of rows.
SELECT metric, unit, jsonb_typeof(value) AS type
FROM latest_values
WHERE device_key = %(device_key)s;

-- name: device_in_scope
-- The one way from a device id to its key: within the caller's scope.
SELECT d.device_id, d.device_key, d.org_id, o.name AS org, o.display_name AS org_display_name,
       d.display_name, d.labels, d.enabled, d.broker, d.offline_after_s, d.created_at,
       d.secret_rotated_at, d.gateway_id, coalesce(s.online, false) AS online, s.last_seen,
       s.status_changed
FROM devices d
JOIN organisations o ON o.id = d.org_id
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE d.device_id = %(device_id)s AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s);

-- name: presence_events
SELECT time, online, source
FROM presence_events
WHERE device_key = %(device_key)s
ORDER BY time DESC
LIMIT %(limit)s;

-- name: readings_raw
-- One series: a metric in one unit ('' for plain telemetry), never several units mixed.
-- Oldest first by (time, seq): within a series that is a reading's identity
-- (readings_identity), so the API pages by keyset on it; seq is -1 where a reading has none
-- (seqs are 0 or more). The caller also moves `start` up to the last page's time, so chunk
-- exclusion works on a plain range either way.
SELECT time, coalesce(seq, -1) AS seq, value
FROM readings
WHERE device_key = %(device_key)s AND metric = %(metric)s AND unit = %(unit)s
  AND time >= %(start)s AND time < %(end)s AND value IS NOT NULL
  AND (%(after_time)s::timestamptz IS NULL
       OR (time, coalesce(seq, -1)) > (%(after_time)s::timestamptz, %(after_seq)s::bigint))
ORDER BY time, coalesce(seq, -1)
LIMIT %(limit)s;

-- name: readings_since
SELECT time, metric, unit, value, text_value, is_bool
FROM readings
WHERE device_key = %(device_key)s AND time > %(since)s
ORDER BY time
LIMIT 1000;

-- name: buckets_raw
SELECT time_bucket(make_interval(secs => %(bucket_s)s), time) AS bucket,
       min(value) AS min, max(value) AS max, avg(value) AS avg, count(*) AS count,
       last(value, time) AS last
FROM readings
WHERE device_key = %(device_key)s AND metric = %(metric)s AND unit = %(unit)s
  AND time >= %(start)s AND time < %(end)s AND value IS NOT NULL
GROUP BY 1
ORDER BY 1;

-- name: rollup_mark_1m
-- How far the rollups reach, aligned down to the requested bucket: rollups answer before it,
-- raw readings after it, so the chart reaches "now" although rollups lag behind ingest. A
-- separate query, so the next one gets it as a constant and TimescaleDB excludes chunks.
SELECT coalesce(time_bucket(make_interval(secs => %(bucket_s)s), max(bucket)), %(start)s) AS upto
FROM rollup_1m
WHERE device_key = %(device_key)s AND metric = %(metric)s AND unit = %(unit)s
  AND bucket >= %(start)s AND bucket < %(end)s;

-- name: rollup_mark_1h
SELECT coalesce(time_bucket(make_interval(secs => %(bucket_s)s), max(bucket)), %(start)s) AS upto
FROM rollup_1h
WHERE device_key = %(device_key)s AND metric = %(metric)s AND unit = %(unit)s
  AND bucket >= %(start)s AND bucket < %(end)s;

-- name: buckets_rollup_1m
SELECT time_bucket(make_interval(secs => %(bucket_s)s), r.bucket) AS bucket,
       min(r.min) AS min, max(r.max) AS max,
       sum(r.avg * r.count) / nullif(sum(r.count), 0) AS avg, sum(r.count)::bigint AS count,
       last(r.last, r.last_time) AS last
FROM rollup_1m r
WHERE r.device_key = %(device_key)s AND r.metric = %(metric)s AND r.unit = %(unit)s
  AND r.bucket >= %(start)s AND r.bucket < %(end)s AND r.bucket < %(upto)s
GROUP BY 1
UNION ALL
SELECT time_bucket(make_interval(secs => %(bucket_s)s), t.time) AS bucket,
       min(t.value), max(t.value), avg(t.value), count(*), last(t.value, t.time)
FROM readings t
WHERE t.device_key = %(device_key)s AND t.metric = %(metric)s AND t.unit = %(unit)s
  AND t.value IS NOT NULL
  AND t.time >= %(upto)s AND t.time >= %(start)s AND t.time < %(end)s
GROUP BY 1
ORDER BY 1;

-- name: buckets_rollup_1h
SELECT time_bucket(make_interval(secs => %(bucket_s)s), r.bucket) AS bucket,
       min(r.min) AS min, max(r.max) AS max,
       sum(r.avg * r.count) / nullif(sum(r.count), 0) AS avg, sum(r.count)::bigint AS count,
       last(r.last, r.last_time) AS last
FROM rollup_1h r
WHERE r.device_key = %(device_key)s AND r.metric = %(metric)s AND r.unit = %(unit)s
  AND r.bucket >= %(start)s AND r.bucket < %(end)s AND r.bucket < %(upto)s
GROUP BY 1
UNION ALL
SELECT time_bucket(make_interval(secs => %(bucket_s)s), t.time) AS bucket,
       min(t.value), max(t.value), avg(t.value), count(*), last(t.value, t.time)
FROM readings t
WHERE t.device_key = %(device_key)s AND t.metric = %(metric)s AND t.unit = %(unit)s
  AND t.value IS NOT NULL
  AND t.time >= %(upto)s AND t.time >= %(start)s AND t.time < %(end)s
GROUP BY 1
ORDER BY 1;

-- name: try_export_slot
-- One of a user's concurrent export slots: a transaction-level advisory lock taken on the
-- export's own connection, so it is held exactly as long as the export streams (its
-- transaction), counts across gunicorn workers and hosts, and is released by PostgreSQL
-- when the transaction ends, even if the worker dies. Never waits.
SELECT pg_try_advisory_xact_lock(%(namespace)s, %(key)s) AS locked;

-- name: device_alerts
SELECT a.id, a.state, a.value, a.started_at, a.acknowledged_at, a.cleared_at, a.message,
       r.name AS rule, r.metric, r.severity, a.device_id
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE a.device_id = %(device_id)s AND (%(org_id)s::bigint IS NULL OR a.org_id = %(org_id)s)
ORDER BY (a.state = 'cleared'), a.started_at DESC
LIMIT %(limit)s;

-- name: list_alerts
-- Newest first, ties broken by id so the order is total: the API pages by keyset on
-- (started_at, id), `before_*` being the last of the previous page.
SELECT a.id, a.state, a.value, a.started_at, a.acknowledged_at, a.cleared_at, a.message,
       r.name AS rule, r.metric, r.severity, a.device_id
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE (%(org_id)s::bigint IS NULL OR a.org_id = %(org_id)s)
  AND (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(device_id)s::text IS NULL OR a.device_id = %(device_id)s)
  AND (%(before_time)s::timestamptz IS NULL
       OR (a.started_at, a.id) < (%(before_time)s::timestamptz, %(before_id)s::bigint))
ORDER BY a.started_at DESC, a.id DESC
LIMIT %(limit)s;

-- name: get_alert
SELECT a.id, a.state, a.value, a.started_at, a.acknowledged_at, a.cleared_at, a.message,
       r.name AS rule, r.metric, r.severity, a.device_id
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE a.id = %(alert_id)s AND (%(org_id)s::bigint IS NULL OR a.org_id = %(org_id)s);

-- name: orgs_in_scope
SELECT o.id, o.name, o.display_name, o.created_at,
       (SELECT count(*) FROM devices d WHERE d.org_id = o.id) AS devices,
       (SELECT count(*) FROM users u WHERE u.org_id = o.id) AS users
FROM organisations o
WHERE (%(org_id)s::bigint IS NULL OR o.id = %(org_id)s)
ORDER BY o.name;

-- name: alert_org
-- The organisation of an alert, rule or import the caller may see (the analysis service
-- takes one organisation; an operator acts in the object's own).
SELECT org_id FROM alerts
WHERE id = %(id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s);

-- name: rule_org
SELECT org_id FROM alert_rules
WHERE id = %(id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s);

-- name: import_org
SELECT org_id FROM imports
WHERE id = %(id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s);

-- name: device_org
SELECT org_id FROM devices
WHERE device_id = %(id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s);

-- Replication, for the operators' system page. On the read connection: whether it is a
-- replica, and how far its replay has got.
-- name: read_side_replication
SELECT pg_is_in_recovery() AS in_recovery,
       now() - pg_last_xact_replay_timestamp() AS replay_age,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn;

-- On the primary: each streaming replica. A role without pg_read_all_stats sees the rows of
-- other roles' sessions with NULL state and lags.
-- name: primary_replicas
SELECT application_name, client_addr::text AS client_addr, state,
       write_lag, flush_lag, replay_lag,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS bytes_behind
FROM pg_stat_replication
ORDER BY application_name, client_addr;

-- name: primary_wal_position
-- Where the primary's WAL is after a request's writes (read-your-writes, fieldhub/web/db.py).
SELECT pg_current_wal_lsn()::text AS lsn;

-- name: replica_replayed
-- Whether the read side has replayed up to a position; false on a server that is not a
-- replica, which sends that browser's reads to the primary until the marker expires.
SELECT coalesce(pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn, false) AS replayed;
