-- Named queries of the shared command API (fieldhub/core/command_requests.py).

-- name: lock_device
-- Serialises sends to one device, so two concurrent sends cannot both slip under the cap.
-- org_id NULL means "any organisation" (operators on the command line).
SELECT device_id, enabled FROM devices
WHERE device_id = %(device_id)s
  AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s::bigint)
FOR NO KEY UPDATE;

-- name: count_open
SELECT count(*) AS open FROM commands
WHERE device_id = %(device_id)s AND status IN ('queued', 'sent', 'delivered');

-- name: insert_command
-- clock_timestamp(), not now(): commands created in one transaction still get distinct,
-- increasing times, which is the order devices see them in.
INSERT INTO commands (device_id, name, params, created_at, expires_at, created_by)
SELECT %(device_id)s, %(name)s, %(params)s, t.at, t.at + make_interval(secs => %(ttl_s)s),
       %(created_by)s
FROM (SELECT clock_timestamp() AS at) t
RETURNING id, device_id, name, params, status, created_at, expires_at, updated_at, created_by,
          result, error;

-- name: lock_command
SELECT c.id, c.status FROM commands c
JOIN devices d ON d.device_id = c.device_id
WHERE c.id = %(id)s
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint)
FOR UPDATE OF c;

-- name: set_cancelled
UPDATE commands SET status = 'cancelled', updated_at = now()
WHERE id = %(id)s
RETURNING id, device_id, name, params, status, created_at, expires_at, updated_at, created_by,
          result, error;

-- name: get_command
SELECT c.id, c.device_id, c.name, c.params, c.status, c.created_at, c.expires_at, c.updated_at,
       c.created_by, c.result, c.error
FROM commands c
JOIN devices d ON d.device_id = c.device_id
WHERE c.id = %(id)s
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint);

-- name: command_timeline
SELECT status, at, detail FROM command_events
WHERE command_id = %(id)s
ORDER BY id;

-- name: list_commands
-- Newest first on (created_at, id), a total order: callers page by keyset with `before_*`,
-- the last command of the previous page.
SELECT c.id, c.device_id, c.name, c.params, c.status, c.created_at, c.expires_at, c.updated_at,
       c.created_by, c.result, c.error
FROM commands c
JOIN devices d ON d.device_id = c.device_id
WHERE (%(device_id)s::text IS NULL OR c.device_id = %(device_id)s::text)
  AND (%(status)s::text IS NULL OR c.status = %(status)s::text)
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint)
  AND (%(before_time)s::timestamptz IS NULL
       OR (c.created_at, c.id) < (%(before_time)s::timestamptz, %(before_id)s::uuid))
ORDER BY c.created_at DESC, c.id DESC
LIMIT %(limit)s;

-- name: expire_commands
-- Migration 0005's function: every open command past its expiry becomes `expired` (the
-- trigger NOTIFYs `commands` for each). Both the bridge's dispatcher and the worker call it;
-- concurrent calls are safe because the UPDATE re-checks its WHERE after waiting for a lock.
SELECT expire_commands() AS expired;
