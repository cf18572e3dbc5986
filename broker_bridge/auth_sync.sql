-- name: devices_for_broker
SELECT device_id, password_hash FROM devices WHERE enabled AND broker = %(broker)s ORDER BY device_id;

-- name: service_accounts
SELECT username, password_hash, acl FROM service_accounts ORDER BY username;
