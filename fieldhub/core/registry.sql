-- Named queries of the registry (fieldhub/core/registry.py).

-- name: insert_org
INSERT INTO organisations (name, display_name) VALUES (%(name)s, %(display_name)s)
RETURNING id, name, display_name, created_at;

-- name: get_org
SELECT id, name, display_name, created_at FROM organisations WHERE name = %(name)s;

-- name: list_orgs
SELECT o.id, o.name, o.display_name, o.created_at,
       (SELECT count(*) FROM devices d WHERE d.org_id = o.id) AS devices,
       (SELECT count(*) FROM users u WHERE u.org_id = o.id) AS users
FROM organisations o ORDER BY o.name;

-- name: insert_device
INSERT INTO devices (device_id, org_id, display_name, labels, broker, password_hash)
VALUES (%(device_id)s, %(org_id)s, %(display_name)s, %(labels)s, %(broker)s, %(password_hash)s)
RETURNING device_id, org_id, display_name, labels, enabled, broker, created_at;

-- name: get_device
-- device_key is internal: operators see it (`fieldhub device show`), tenants never do.
SELECT d.device_id, d.device_key, d.org_id, o.name AS org, d.display_name, d.labels, d.enabled,
       d.broker, d.offline_after_s, d.created_at, d.secret_rotated_at, d.gateway_id,
       s.online, s.last_seen
FROM devices d
JOIN organisations o ON o.id = d.org_id
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE d.device_id = %(device_id)s;

-- name: list_devices
SELECT d.device_id, o.name AS org, d.display_name, d.labels, d.enabled, d.broker, d.created_at,
       d.gateway_id, coalesce(s.online, false) AS online, s.last_seen
FROM devices d
JOIN organisations o ON o.id = d.org_id
LEFT JOIN device_state s ON s.device_key = d.device_key
WHERE (%(org)s::text IS NULL OR o.name = %(org)s)
ORDER BY d.device_id
LIMIT %(limit)s;

-- name: set_device_enabled
UPDATE devices SET enabled = %(enabled)s WHERE device_id = %(device_id)s RETURNING device_id;

-- name: set_device_secret
UPDATE devices SET password_hash = %(password_hash)s, secret_rotated_at = now()
WHERE device_id = %(device_id)s RETURNING device_id;

-- name: get_service_account
-- One account as stored, so ensure_service_account can leave an unchanged one alone.
SELECT username, password_hash, acl FROM service_accounts WHERE username = %(username)s;

-- name: delete_service_account
-- The registry trigger tells every auth-sync; the broker then refuses the account's login.
DELETE FROM service_accounts WHERE username = %(username)s RETURNING username;

-- name: upsert_service_account
INSERT INTO service_accounts (username, password_hash, acl)
VALUES (%(username)s, %(password_hash)s, %(acl)s)
ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, acl = excluded.acl;

-- Bulk provisioning (device import): COPY into a temporary table, then one INSERT, so the
-- registry trigger fires once and a taken id is skipped instead of aborting the import.
-- name: create_import_table
CREATE TEMPORARY TABLE device_import (
    device_id text NOT NULL,
    display_name text NOT NULL,
    labels jsonb NOT NULL,
    broker text NOT NULL,
    password_hash text NOT NULL
) ON COMMIT DROP;

-- name: copy_import_table
COPY device_import (device_id, display_name, labels, broker, password_hash) FROM STDIN;

-- name: insert_imported_devices
INSERT INTO devices (device_id, org_id, display_name, labels, broker, password_hash)
SELECT device_id, %(org_id)s, display_name, labels, broker, password_hash FROM device_import
ON CONFLICT (device_id) DO NOTHING
RETURNING device_id;

-- name: list_service_accounts
SELECT username, acl, created_at FROM service_accounts ORDER BY username;

-- Gateways (attach_gateway, detach_gateway).
-- name: lock_gateway_pair
-- Both rows, in id order, so attaching A to B and B to C at the same time serialise on B
-- instead of deadlocking. org_id NULL: any.
SELECT d.device_id FROM devices d
WHERE d.device_id = ANY(%(device_ids)s::text[])
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint)
ORDER BY d.device_id
FOR NO KEY UPDATE;

-- name: gateway_pair
-- A statement of its own after the locks: under READ COMMITTED it sees what the transaction
-- we waited for committed (a child attached to one of the two meanwhile), which a subquery
-- of the locking statement, evaluated in that statement's older snapshot, would not.
SELECT d.device_id, d.org_id, o.name AS org, d.broker, d.gateway_id,
       EXISTS (SELECT 1 FROM devices c WHERE c.gateway_id = d.device_id) AS has_children
FROM devices d
JOIN organisations o ON o.id = d.org_id
WHERE d.device_id = ANY(%(device_ids)s::text[]);

-- name: count_children
SELECT count(*) AS children FROM devices WHERE gateway_id = %(gateway_id)s;

-- name: set_gateway
UPDATE devices SET gateway_id = %(gateway_id)s WHERE device_id = %(device_id)s;

-- name: detach_gateway
-- Returns the gateway it had (NULL: none) for the caller to report; scoped like the rest.
UPDATE devices d SET gateway_id = NULL
FROM devices old
WHERE d.device_id = %(device_id)s AND old.device_id = d.device_id
  AND (%(org_id)s::bigint IS NULL OR d.org_id = %(org_id)s::bigint)
RETURNING old.gateway_id;

-- name: gateway_children
SELECT device_id, enabled FROM devices WHERE gateway_id = %(gateway_id)s ORDER BY device_id;
