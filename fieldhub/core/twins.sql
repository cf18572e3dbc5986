-- Named queries of the shared twin API (fieldhub/core/twins.py).

-- name: ensure_twin
-- The twin row of a device of this organisation (org_id NULL: any), created empty on first
-- use. Returns nothing for an unknown device or one of another organisation.
INSERT INTO device_twins (device_id)
SELECT device_id FROM devices
WHERE device_id = %(device_id)s
  AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s::bigint)
ON CONFLICT (device_id) DO NOTHING;

-- name: lock_twin
-- Serialises desired changes of one device (and against the bridge applying a report), so the
-- version check of If-Match and the merge see the document they change.
SELECT t.device_id, t.desired, t.desired_version, t.reported_version
FROM device_twins t
JOIN devices d ON d.device_id = t.device_id
WHERE t.device_id = %(device_id)s
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint)
FOR UPDATE OF t;

-- name: set_desired
UPDATE device_twins
SET desired = %(desired)s, desired_version = desired_version + 1,
    desired_updated_at = now(), revision = revision + 1
WHERE device_id = %(device_id)s
RETURNING desired_version;

-- name: insert_desired_change
INSERT INTO twin_desired_changes (device_id, version, patch, changed_by, actor, source)
VALUES (%(device_id)s, %(version)s, %(patch)s, %(changed_by)s, %(actor)s, %(source)s);

-- name: get_twin
-- A device of this organisation and its twin, if it has one (LEFT JOIN: no twin row yet is an
-- empty twin at version 0, not an unknown device).
SELECT d.device_id, t.desired, t.desired_version, t.desired_updated_at,
       t.reported, t.reported_version, t.reported_seq, t.reported_at
FROM devices d
LEFT JOIN device_twins t ON t.device_id = d.device_id
WHERE d.device_id = %(device_id)s
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint);

-- name: desired_history
-- Newest first; the unique (device_id, version) index serves it.
SELECT version, patch, actor, source, changed_at
FROM twin_desired_changes
WHERE device_id = %(device_id)s
ORDER BY version DESC
LIMIT %(limit)s;
