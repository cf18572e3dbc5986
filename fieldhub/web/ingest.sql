-- Named queries of HTTP ingest (fieldhub/web/ingest.py). Readings, latest_values, presence
-- and the telemetry notification go through fieldhub/core/readings.sql, as the bridge's do.

-- name: ingest_login
-- The device a request names, with what authenticates it, and the failed logins that may
-- throttle it (recent_login_failures of fieldhub/core/users.sql, for these keys): one round
-- trip. One row even for an unknown id (device columns NULL), so its failures are seen too.
-- By primary key, no lock: a device disabled or deleted a moment later is refused by its next
-- request, as by its next MQTT login.
SELECT d.device_id, d.device_key, d.org_id, d.enabled, d.password_hash,
       (SELECT coalesce(jsonb_agg(f), '[]'::jsonb)
        FROM (SELECT key, count(*) AS failures,
                     extract(epoch FROM min(failed_at) + make_interval(secs => %(window_s)s)
                                        - now()) AS retry_after_s
              FROM login_failures
              WHERE key = ANY(%(keys)s::text[])
                AND failed_at > now() - make_interval(secs => %(window_s)s)
              GROUP BY key) AS f) AS failures,
       -- A client certificate counts only while it is the device's active one.
       EXISTS (SELECT 1 FROM device_certificates c
               WHERE c.serial = %(serial)s AND c.device_key = d.device_key
                 AND c.state = 'active') AS certificate_active
FROM (SELECT 1) AS one
LEFT JOIN devices d ON d.device_id = %(device_id)s;

-- name: count_request
-- One request into the device's one-second window; autocommitted on its own, so the row lock
-- is held for this statement only (requests of one device wait for each other here, never
-- for another device's). clock_timestamp, not now(): the statement is its own transaction.
INSERT INTO ingest_rate AS r (device_key, window_start, requests)
VALUES (%(device_key)s, date_trunc('second', clock_timestamp()), 1)
ON CONFLICT (device_key) DO UPDATE
    SET window_start = excluded.window_start,
        requests = CASE WHEN r.window_start = excluded.window_start THEN r.requests + 1 ELSE 1 END
RETURNING requests,
          extract(epoch FROM window_start + interval '1 second' - clock_timestamp())::float8
              AS seconds_left;

-- name: claim_key
-- First of the request's transaction. A concurrent request with the same key waits here on
-- the primary key until the first commits (then finds its row: nothing inserted) or rolls
-- back (then this one inserts and goes on as the first).
INSERT INTO ingest_idempotency (device_key, key, body_sha256, status, response)
VALUES (%(device_key)s, %(key)s, %(body_sha256)s, 0, 'null')
ON CONFLICT (device_key, key) DO NOTHING
RETURNING 1 AS claimed;

-- name: stored_key
SELECT body_sha256, status, response
FROM ingest_idempotency
WHERE device_key = %(device_key)s AND key = %(key)s;

-- name: finish_key
-- In the same transaction as the readings: the answer is stored exactly when they are.
UPDATE ingest_idempotency SET status = %(status)s, response = %(response)s
WHERE device_key = %(device_key)s AND key = %(key)s;

-- name: insert_dead_letter
INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason, detail, payload)
VALUES (to_timestamp(%(received_at)s), %(device_id)s, %(device_key)s, %(topic)s, %(reason)s,
        %(detail)s, %(payload)s);
