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
-- Every device's open commands this broker has not acknowledged yet, whichever broker the
-- device is homed on: a device that fails over to this broker finds them here. Candidates
-- come from the partial index commands_to_publish_everywhere (small: only commands some
-- broker still lacks), each probed against this broker's row by primary key. Oldest first:
-- per device this is creation order, which is the order the device sees them.
SELECT c.id, c.device_id, c.name, c.params, c.created_at, c.expires_at,
       extract(epoch FROM c.expires_at - now()) AS remaining_s
FROM commands c
WHERE NOT c.published_everywhere AND c.status IN ('queued', 'sent', 'delivered')
  AND c.expires_at > now()
  AND NOT EXISTS (
      SELECT 1 FROM command_publications p
      WHERE p.command_id = c.id AND p.broker = %(broker)s AND p.published_at IS NOT NULL)
ORDER BY c.created_at, c.id
LIMIT %(limit)s;

-- name: sent_ids
-- Every device's sent commands still in time: what a broker whose connection is new gets
-- again, whatever it holds (commands_open). Not delivered ones: their device has them and
-- answered; a copy would only arrive behind newer commands.
SELECT id FROM commands
WHERE status = 'sent' AND expires_at > now();

-- name: live_among
-- Of the commands a reconnected broker holds retained, those still live (by primary key);
-- queued counts: a dispatcher that crashed before recording a PUBACK left one published.
SELECT id, device_id FROM commands
WHERE id = ANY(%(ids)s::uuid[]) AND status IN ('queued', 'sent', 'delivered');

-- name: sent_to_republish
SELECT id, device_id, name, params, created_at, expires_at,
       extract(epoch FROM expires_at - now()) AS remaining_s
FROM commands
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'sent' AND expires_at > now()
ORDER BY created_at, id;

-- name: record_command_published
-- This broker's PUBACK; the first broker's moves the command as on_published says (queued ->
-- sent; migration 0016 says how the brokers' records are serialised).
SELECT record_command_published(%(id)s, %(broker)s, %(brokers)s::text[],
                                %(moves_from)s::text[], %(moves_to)s);

-- name: finals_to_clear
-- Final commands this broker has not cleared yet: candidates from the partial index
-- commands_to_dispatch (final and not cleared on every broker), probed by primary key. A
-- broker that never acknowledged the command clears it too: a publish whose PUBACK was lost
-- may still have reached it.
SELECT c.id, c.device_id FROM commands c
WHERE c.status IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled')
  AND NOT c.retained_cleared
  AND NOT EXISTS (
      SELECT 1 FROM command_publications p
      WHERE p.command_id = c.id AND p.broker = %(broker)s AND p.cleared_at IS NOT NULL)
ORDER BY c.created_at, c.id
LIMIT %(limit)s;

-- name: record_command_cleared
-- The last broker to clear sets retained_cleared.
SELECT record_command_cleared(%(id)s, %(broker)s, %(brokers)s::text[]);

-- name: next_expiry
SELECT extract(epoch FROM min(expires_at) - now()) AS seconds
FROM commands
WHERE status IN ('queued', 'sent', 'delivered');
