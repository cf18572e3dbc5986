-- Named queries of the device simulator (fieldhub/sim/simulate.py).

-- Learn the secrets of the simulator's own devices again (only hashes are stored) in one
-- statement: one registry notification, one broker reload, even for 10,000 devices.
-- Scoped to the organisation, so a simulator can never take over another tenant's device.
-- name: set_device_secrets
UPDATE devices d
SET password_hash = v.password_hash, secret_rotated_at = now()
FROM unnest(%(device_ids)s::text[], %(password_hashes)s::text[]) AS v (device_id, password_hash)
WHERE d.device_id = v.device_id AND d.org_id = %(org_id)s
RETURNING d.device_id;
