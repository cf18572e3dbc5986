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

-- name: count_committed
-- The session's committed QoS 1 messages before this batch, and this batch's added. One row
-- per session and one writer per session (the broker binds the session to one connection),
-- so the row lock is never waited on.
INSERT INTO ingest_ledger_sessions AS s (session, committed)
VALUES (%(session)s, %(count)s)
ON CONFLICT (session) DO UPDATE SET committed = s.committed + excluded.committed
RETURNING s.committed - %(count)s AS before;

-- name: ledger_rows
-- The ledger rows of the DUP=1 messages of a batch without ts (docs/devices.md).
SELECT packet_id, payload_hash, received_us, committed
FROM ingest_ledger
WHERE session = %(session)s AND packet_id = ANY(%(packet_ids)s::int4[]);

-- name: record_ledger
-- The batch's committed messages without ts, one per packet id (the caller keeps the last).
-- Ordered by packet id so that a retried batch takes the row locks in the same order.
INSERT INTO ingest_ledger AS l (session, packet_id, payload_hash, received_us, committed)
SELECT %(session)s, p, h, r, %(committed)s
FROM unnest(%(packet_ids)s::int4[], %(hashes)s::bytea[], %(stamps)s::int8[]) AS u(p, h, r)
ORDER BY p
ON CONFLICT (session, packet_id) DO UPDATE
    SET payload_hash = excluded.payload_hash,
        received_us = excluded.received_us,
        committed = excluded.committed;

-- name: session_has_ledger
SELECT EXISTS (SELECT FROM ingest_ledger WHERE session = %(session)s) AS has;
