-- name: device_password_lines
-- The device listeners' password file (auth/passwords), one `id:hash` line per enabled device,
-- homed here or not: every broker admits every device, so a device whose home broker is lost
-- logs in to the next one of its mqtt_urls (docs/devices.md; the ACL still confines it to its
-- own topics). Device ids cannot contain ':' or a newline, so no escaping is needed. An id
-- whose deleted predecessor is not yet worked off on this broker (tombstone_brokers, served by
-- tombstone_brokers_open) is left out: a re-created device waits until the old one's retained
-- messages, stream and session are gone from this broker (docs/devices.md). Sorted
-- in a subquery, not with string_agg(... ORDER BY): measured 2-3x faster at 100,000 devices,
-- and a stable order means an unchanged registry renders an unchanged file (no reload).
SELECT coalesce(string_agg(line, ''), '') AS lines
FROM (
    SELECT device_id || ':' || password_hash || E'\n' AS line
    FROM devices
    WHERE enabled
      AND NOT EXISTS (SELECT 1 FROM tombstone_brokers t
                      WHERE t.broker = %(broker)s AND t.device_id = devices.device_id
                        AND t.session_cleared_at IS NULL)
    ORDER BY device_id
) AS ordered;

-- name: service_accounts
-- The services listener's accounts (auth/services.passwords and auth/services.acl).
SELECT username, password_hash, acl FROM service_accounts ORDER BY username;

-- name: gateways_with_children
-- Each enabled gateway (of every broker, like the logins) with its enabled children (a disabled
-- child is refused by the bridge anyway; least privilege keeps it out of the broker's rules
-- too), leaving out a re-created child whose id still waits for its predecessor's tombstone,
-- like its login. Sorted, so an unchanged registry renders an unchanged file.
SELECT g.device_id AS gateway, c.device_id AS child
FROM devices c
JOIN devices g ON g.device_id = c.gateway_id
WHERE c.enabled AND g.enabled
  AND NOT EXISTS (SELECT 1 FROM tombstone_brokers t
                  WHERE t.broker = %(broker)s AND t.device_id = c.device_id
                    AND t.session_cleared_at IS NULL)
ORDER BY g.device_id, c.device_id;

-- name: crl_entries
-- What the certificate listener's CRL lists: revoked certificates until they expire (after
-- that the handshake refuses them anyway), and the active certificates of disabled devices,
-- held (the entry goes when the device is enabled again). A held entry is dated by its issue
-- time, which does not change, so an unchanged registry asks for the same CRL.
SELECT serial, device_id, not_after, revoked_at, revoke_reason AS reason
FROM device_certificates
WHERE state = 'revoked' AND not_after > now()
UNION ALL
SELECT c.serial, c.device_id, c.not_after, c.issued_at, 'certificateHold'
FROM device_certificates c
JOIN devices d ON d.device_key = c.device_key
WHERE c.state = 'active' AND NOT d.enabled AND c.not_after > now()
ORDER BY serial;
