-- Named queries of people, their web sessions, API tokens and login throttling (fieldhub/core/users.py).

-- name: insert_user
INSERT INTO users (email, org_id, role, password_hash)
VALUES (%(email)s, %(org_id)s, %(role)s, %(password_hash)s)
RETURNING id, email, org_id, role, created_at;

-- name: user_by_email
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.password_hash, u.created_at, u.last_login_at
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE lower(u.email) = lower(%(email)s);

-- name: user_by_id
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.password_hash, u.created_at, u.last_login_at
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE u.id = %(user_id)s;

-- name: list_users
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.created_at, u.last_login_at
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE (%(org_id)s::bigint IS NULL OR u.org_id = %(org_id)s)
ORDER BY o.name, lower(u.email);

-- name: set_password_hash
UPDATE users SET password_hash = %(password_hash)s WHERE id = %(user_id)s RETURNING id;

-- name: set_time_zone
-- A person's own preference: one row by primary key, last write wins.
UPDATE users SET time_zone = %(time_zone)s WHERE id = %(user_id)s RETURNING id;

-- name: touch_login
UPDATE users SET last_login_at = now() WHERE id = %(user_id)s;

-- name: delete_user
DELETE FROM users WHERE id = %(user_id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s)
RETURNING id;

-- name: insert_session
INSERT INTO web_sessions (token_hash, user_id, csrf_token, expires_at)
VALUES (%(token_hash)s, %(user_id)s, %(csrf_token)s, now() + make_interval(secs => %(ttl_s)s));

-- name: session_user
-- The session's user, and its sliding expiry pushed forward (written at most every few
-- minutes, so page views are not all writes): one round trip per request.
WITH touched AS (
    UPDATE web_sessions
    SET last_seen_at = now(), expires_at = now() + make_interval(secs => %(ttl_s)s)
    WHERE token_hash = %(token_hash)s AND expires_at > now()
      AND last_seen_at < now() - interval '5 minutes'
)
SELECT s.csrf_token, s.last_seen_at, s.expires_at,
       u.id, u.email, u.org_id, o.name AS org, o.display_name AS org_display_name, u.role,
       u.time_zone
FROM web_sessions s
JOIN users u ON u.id = s.user_id
JOIN organisations o ON o.id = u.org_id
WHERE s.token_hash = %(token_hash)s AND s.expires_at > now();

-- name: delete_session
DELETE FROM web_sessions WHERE token_hash = %(token_hash)s;

-- name: delete_user_sessions
DELETE FROM web_sessions WHERE user_id = %(user_id)s;

-- name: delete_expired_sessions
DELETE FROM web_sessions WHERE expires_at < now();

-- name: insert_api_token
INSERT INTO api_tokens (user_id, token_hash, name) VALUES (%(user_id)s, %(token_hash)s, %(name)s)
RETURNING id, user_id, name, created_at;

-- name: api_token_user
SELECT t.id AS token_id, t.last_used_at,
       u.id, u.email, u.org_id, o.name AS org, o.display_name AS org_display_name, u.role
FROM api_tokens t
JOIN users u ON u.id = t.user_id
JOIN organisations o ON o.id = u.org_id
WHERE t.token_hash = %(token_hash)s;

-- name: touch_api_token
UPDATE api_tokens SET last_used_at = now()
WHERE id = %(token_id)s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: record_login_failure
INSERT INTO login_failures (key) SELECT unnest(%(keys)s::text[]);

-- name: recent_login_failures
-- Failures per key inside the window, and when the oldest of them leaves it.
SELECT key, count(*) AS failures,
       extract(epoch FROM min(failed_at) + make_interval(secs => %(window_s)s) - now()) AS retry_after_s
FROM login_failures
WHERE key = ANY(%(keys)s::text[]) AND failed_at > now() - make_interval(secs => %(window_s)s)
GROUP BY key;

-- name: clear_login_failures
DELETE FROM login_failures WHERE key = %(key)s;

-- name: prune_login_failures
DELETE FROM login_failures WHERE failed_at < now() - make_interval(secs => %(window_s)s);

-- name: lock_login_key
-- Serialises login attempts for one account across every worker, so the limit is exact.
SELECT pg_advisory_xact_lock(hashtext(%(key)s));
