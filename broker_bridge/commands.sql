-- Named queries of the bridge's command handling (broker_bridge/commands.py).

-- name: lock_commands
-- Rows are locked in id order so two bridge instances applying acks never deadlock.
SELECT id, device_id, status FROM commands
WHERE id = ANY(%(ids)s::uuid[])
ORDER BY id
FOR UPDATE;

-- name: set_status_from_ack
UPDATE commands
SET status = %(status)s,
    result = coalesce(%(result)s::jsonb, result),
    error = coalesce(%(error)s, error),
    updated_at = now()
WHERE id = %(id)s;

-- name: try_leader_lock
SELECT pg_try_advisory_lock(%(key)s) AS leader;

-- name: expire_commands
SELECT expire_commands() AS expired;

-- name: queued_to_publish
-- Oldest first: per device this is creation order, which is the order the device sees them.
SELECT id, device_id, name, params, created_at, expires_at,
       extract(epoch FROM expires_at - now()) AS remaining_s
FROM commands
WHERE status = 'queued' AND expires_at > now()
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: sent_ids
-- What was already `sent` when this dispatcher took over (not what it sends itself).
SELECT id FROM commands WHERE status = 'sent' AND expires_at > now();

-- name: sent_to_republish
SELECT id, device_id, name, params, created_at, expires_at,
       extract(epoch FROM expires_at - now()) AS remaining_s
FROM commands
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'sent' AND expires_at > now()
ORDER BY created_at, id;

-- name: mark_sent
-- Only from queued: an ack that overtook our PUBACK bookkeeping must not be overwritten.
UPDATE commands SET status = 'sent', updated_at = now()
WHERE id = %(id)s AND status = 'queued';

-- name: finals_to_clear
SELECT id, device_id FROM commands
WHERE status IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled')
  AND NOT retained_cleared
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: mark_cleared
UPDATE commands SET retained_cleared = true WHERE id = %(id)s;

-- name: next_expiry
SELECT extract(epoch FROM min(expires_at) - now()) AS seconds
FROM commands
WHERE status IN ('queued', 'sent', 'delivered');
