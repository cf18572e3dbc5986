-- name: device_password_lines
-- The device part of Mosquitto's password file, one `id:hash` line per enabled device of
-- this broker (device ids cannot contain ':' or a newline, so no escaping is needed).
SELECT coalesce(string_agg(device_id || ':' || password_hash || E'\n', '' ORDER BY device_id), '')
       AS lines
FROM devices WHERE enabled AND broker = %(broker)s;

-- name: service_accounts
SELECT username, password_hash, acl FROM service_accounts ORDER BY username;
