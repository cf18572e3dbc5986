-- Named queries of the certificate registry (fieldhub/core/certificates.py).

-- name: lock_device_for_certificate
-- The device row, locked: a rotation and a delete of one device take turns, so a certificate
-- is never recorded for a device that is being deleted (its trigger would miss it).
SELECT device_id, device_key FROM devices WHERE device_id = %(device_id)s FOR UPDATE;

-- name: supersede
-- The device's active certificates, replaced by the one recorded next in this transaction.
UPDATE device_certificates
SET state = 'revoked', revoked_at = now(), revoke_reason = 'superseded'
WHERE device_key = %(device_key)s AND state = 'active'
RETURNING serial;

-- name: record
INSERT INTO device_certificates (serial, device_key, device_id, fingerprint, not_after, key_type)
VALUES (%(serial)s, %(device_key)s, %(device_id)s, %(fingerprint)s, %(not_after)s, %(key_type)s);

-- name: device_certificates
-- Newest first, by the device's key (a deleted device's namesake shows none of them).
SELECT serial, fingerprint, not_after, key_type, state, issued_at, revoked_at, revoke_reason
FROM device_certificates
WHERE device_key = %(device_key)s
ORDER BY issued_at DESC, serial;
