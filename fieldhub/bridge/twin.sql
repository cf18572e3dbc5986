-- Named queries of the bridge's twin handling (fieldhub/bridge/twin.py).

-- name: ensure_twins
-- A device's first report creates its twin. Only devices that exist: one deleted a moment ago
-- gets no row (its report is dead-lettered) instead of a foreign key error that would abort
-- the whole batch. Sorted, so two bridges insert in the same order.
INSERT INTO device_twins (device_id)
SELECT device_id FROM devices WHERE device_id = ANY(%(devices)s::text[])
ORDER BY device_id
ON CONFLICT (device_id) DO NOTHING;

-- name: lock_twins
-- Locked in device order, so two bridge instances applying reports of the same devices (and
-- the web app changing desired state) never deadlock; the lock makes the version check and
-- the merge see the document they change.
SELECT device_id, desired_version, reported, reported_version, reported_seq
FROM device_twins
WHERE device_id = ANY(%(devices)s::text[])
ORDER BY device_id
FOR UPDATE;

-- name: set_reported
-- revision moves only when the document or its version changed: a report that repeats what is
-- stored only refreshes its time and needs nothing published.
UPDATE device_twins AS t
SET reported = u.reported, reported_version = u.version, reported_seq = u.seq,
    reported_at = to_timestamp(u.at), revision = t.revision + u.bump
FROM unnest(%(devices)s::text[], %(reported)s::jsonb[], %(versions)s::bigint[],
            %(seqs)s::bigint[], %(times)s::float8[], %(bumps)s::int[])
     AS u(device_id, reported, version, seq, at, bump)
WHERE t.device_id = u.device_id;

-- name: twins_to_publish
-- What this broker does not have yet, for every device whichever broker it is homed on:
-- candidates from the partial index device_twins_to_publish (not held by every broker),
-- probed against this broker's twin_publications row by primary key. A re-created device
-- waits while its id's old retained twin is not cleared on this broker yet
-- (tombstone_brokers): the clearing publishes to the same topics and would wipe the new
-- document.
SELECT t.device_id, t.desired, t.desired_version, t.reported, t.revision,
       p.desired_version AS published_desired_version, p.delta AS published_delta
FROM device_twins t
LEFT JOIN twin_publications p ON p.device_id = t.device_id AND p.broker = %(broker)s
WHERE t.published_revision < t.revision
  AND (p.revision IS NULL OR p.revision < t.revision)
  AND NOT EXISTS (
      SELECT 1 FROM tombstone_brokers tb
      WHERE tb.device_id = t.device_id AND tb.retained_cleared_at IS NULL
        AND tb.broker = %(broker)s)
ORDER BY t.device_id
LIMIT %(limit)s;

-- name: record_twin_published
-- What this broker now holds; the last broker to hold a revision moves published_revision
-- (migration 0016).
SELECT record_twin_published(%(device_id)s, %(broker)s, %(brokers)s::text[], %(revision)s,
                             %(desired_version)s, %(delta)s);

-- name: forget_published
-- This broker may have lost its retained messages (it restarted, or nobody watched it): every
-- twin is published to it again by the following sweeps. The other brokers' dispatchers see
-- the twins among their candidates again but skip them (their own rows are current) until
-- this broker's records move published_revision back up.
WITH forgotten AS (
    DELETE FROM twin_publications WHERE broker = %(broker)s
)
UPDATE device_twins SET published_revision = -1 WHERE published_revision >= 0;
