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
-- What the broker does not have yet (partial index device_twins_to_publish). Scoped to the
-- devices homed on this dispatcher's broker when there are several brokers. A re-created
-- device waits while its id's old retained twin is not cleared yet (tombstone_brokers): the
-- clearing publishes to the same topics and would wipe the new document.
SELECT t.device_id, t.desired, t.desired_version, t.reported, t.revision,
       t.published_desired_version, t.published_delta
FROM device_twins t
WHERE t.published_revision < t.revision
  AND (%(broker)s::text IS NULL OR EXISTS (
      SELECT 1 FROM devices d WHERE d.device_id = t.device_id AND d.broker = %(broker)s))
  AND NOT EXISTS (
      SELECT 1 FROM tombstone_brokers tb
      WHERE tb.device_id = t.device_id AND tb.retained_cleared_at IS NULL
        AND (%(broker)s::text IS NULL OR tb.broker = %(broker)s))
ORDER BY t.device_id
LIMIT %(limit)s;

-- name: mark_published
-- What the broker now holds. greatest(): a change made while we published keeps its revision
-- ahead, so the next sweep publishes it.
UPDATE device_twins
SET published_revision = greatest(published_revision, %(revision)s),
    published_desired_version = %(desired_version)s,
    published_delta = %(delta)s
WHERE device_id = %(device_id)s;

-- name: forget_published
-- The broker may have lost its retained messages (it restarted, or nobody watched it): every
-- twin of this broker is published again by the following sweeps.
UPDATE device_twins AS t
SET published_revision = -1, published_desired_version = NULL, published_delta = NULL
WHERE (%(broker)s::text IS NULL OR EXISTS (
    SELECT 1 FROM devices d WHERE d.device_id = t.device_id AND d.broker = %(broker)s));
