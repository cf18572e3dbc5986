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
-- The session's committed QoS 1 messages before this batch, and this batch's added (in the
-- pipeline when the batch records nothing; first, for its result, when it has DUP copies). One row
-- per session and one writer per session (the broker binds the session to one connection),
-- so the row lock is never waited on.
INSERT INTO ingest_ledger_sessions AS s (session, committed)
VALUES (%(session)s, %(count)s)
ON CONFLICT (session) DO UPDATE SET committed = s.committed + excluded.committed
RETURNING s.committed - %(count)s AS before;

-- name: ledger_batches
-- The session's recorded batches young enough to be used (fieldhub.bridge.ledger), oldest
-- first so that a later use of a packet id wins; read only for batches with DUP=1 copies.
SELECT committed, packet_ids, hashes, stamps
FROM ingest_ledger
WHERE session = %(session)s AND committed >= %(since)s
ORDER BY committed;

-- name: record_ledger
-- Counts the batch's QoS 1 messages and records its messages without ts in one row, in the
-- batch's pipeline (no round trip of its own); batches too old to be used go in the same
-- statement (the primary key's range of one session, which only this bridge writes).
WITH counted AS (
    INSERT INTO ingest_ledger_sessions AS s (session, committed)
    VALUES (%(session)s, %(count)s)
    ON CONFLICT (session) DO UPDATE SET committed = s.committed + excluded.committed
    RETURNING s.committed - %(count)s AS before
), pruned AS (
    DELETE FROM ingest_ledger
    WHERE session = %(session)s AND committed < (SELECT before FROM counted) - %(max_age)s
)
INSERT INTO ingest_ledger (session, committed, packet_ids, hashes, stamps)
SELECT %(session)s, before, %(packet_ids)s, %(hashes)s, %(stamps)s FROM counted;

-- name: record_ledger_at
-- The same for a batch with DUP=1 copies, whose count was taken first (count_committed).
WITH pruned AS (
    DELETE FROM ingest_ledger WHERE session = %(session)s AND committed < %(since)s
)
INSERT INTO ingest_ledger (session, committed, packet_ids, hashes, stamps)
VALUES (%(session)s, %(committed)s, %(packet_ids)s, %(hashes)s, %(stamps)s);

-- name: session_has_ledger
SELECT EXISTS (SELECT FROM ingest_ledger WHERE session = %(session)s) AS has;
-- name: take_transaction_id
-- Only for an in-doubt retry: with a transaction id, the COMMIT writes a commit record and
-- waits for the synchronous standby up to it, so the earlier attempt's commit (earlier WAL)
-- is on the standby once this one is acknowledged, even when every row of the retry turns out
-- to be a duplicate.
SELECT pg_current_xact_id();

-- name: insert_dead_letters_once
-- Only for an in-doubt retry: the earlier attempt may have stored these. Matched on the
-- letter's content; the primary key's leading received_at narrows each probe to a handful of
-- rows. No lock: one bridge connection writes a given message's dead letter (a redelivery to
-- another bridge instance is a different in-memory batch, whose letters it stores anew).
INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason, detail, payload)
SELECT l.received_at, l.device_id, l.device_key, l.topic, l.reason, l.detail, l.payload
FROM unnest(%(received_at)s::timestamptz[], %(device_ids)s::text[], %(device_keys)s::bigint[],
            %(topics)s::text[], %(reasons)s::text[], %(details)s::text[],
            %(payloads)s::bytea[])
     AS l (received_at, device_id, device_key, topic, reason, detail, payload)
WHERE NOT EXISTS (
    SELECT 1 FROM dead_letters d
    WHERE d.received_at = l.received_at AND d.topic = l.topic AND d.reason = l.reason
      AND d.payload = l.payload AND d.device_id IS NOT DISTINCT FROM l.device_id
);

-- name: commit_locally
-- This transaction's commit returns once the local WAL is flushed, without waiting for the
-- synchronous standby: only for transactions whose effects are of no use on a standby.
SET LOCAL synchronous_commit = local;

-- name: own_backend
-- This connection's server process and its start: together they name it on this server (a pid
-- alone may be reused by another process later).
SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();

-- name: end_orphaned_backend
-- The server process of this writer's previous connection, if it still runs. A link cut after
-- the server answered a statement and before the next one arrived leaves it waiting in the
-- batch's transaction until its TCP keepalives give up, if ever (it has nothing to send, so
-- nothing else tells it the client is gone; idle_in_transaction_session_timeout is not re-armed
-- after a pipeline's Flush),
-- holding the batch's uncommitted readings, on which the in-doubt retry of the same batch would
-- wait. Matched by pid and start time, so a process of another server (after a failover) or a
-- reused pid is never hit; a role may end its own backends. Waits up to 5 s for it to exit.
SELECT pg_terminate_backend(pid, 5000) AS ended FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(started)s;
