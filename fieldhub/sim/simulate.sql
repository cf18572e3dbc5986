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

-- Which broker each of the simulator's devices is homed on (stored at creation, so rotated
-- devices keep theirs). Scoped to the organisation like the rotation above.
-- name: device_brokers
SELECT d.device_id, d.broker
FROM devices d
WHERE d.device_id = ANY(%(device_ids)s::text[]) AND d.org_id = %(org_id)s;
