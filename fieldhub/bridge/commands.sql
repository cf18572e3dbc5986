-- Named queries of the bridge's command handling (fieldhub/bridge/commands.py).

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
-- One leader per broker when the dispatcher is scoped to one (several brokers), else one.
SELECT pg_try_advisory_lock(
    CASE WHEN %(broker)s::text IS NULL THEN %(key)s::bigint
         ELSE %(key)s::bigint # hashtextextended(%(broker)s, 0) END) AS leader;

-- name: queued_to_publish
-- Oldest first: per device this is creation order, which is the order the device sees them.
SELECT id, device_id, name, params, created_at, expires_at,
       extract(epoch FROM expires_at - now()) AS remaining_s
FROM commands
WHERE status = 'queued' AND expires_at > now()
  AND (%(broker)s::text IS NULL OR EXISTS (
      SELECT 1 FROM devices d WHERE d.device_id = commands.device_id AND d.broker = %(broker)s))
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: sent_ids
-- What was already `sent` when this dispatcher took over (not what it sends itself).
SELECT id FROM commands WHERE status = 'sent' AND expires_at > now()
  AND (%(broker)s::text IS NULL OR EXISTS (
      SELECT 1 FROM devices d WHERE d.device_id = commands.device_id AND d.broker = %(broker)s));

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
  AND (%(broker)s::text IS NULL OR EXISTS (
      SELECT 1 FROM devices d WHERE d.device_id = commands.device_id AND d.broker = %(broker)s))
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: mark_cleared
UPDATE commands SET retained_cleared = true WHERE id = %(id)s;

-- name: next_expiry
SELECT extract(epoch FROM min(expires_at) - now()) AS seconds
FROM commands
WHERE status IN ('queued', 'sent', 'delivered');
