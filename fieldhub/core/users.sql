-- Named queries of people, their web sessions, API tokens and login throttling (fieldhub/core/users.py).

-- name: insert_user
INSERT INTO users (email, org_id, role, password_hash)
VALUES (%(email)s, %(org_id)s, %(role)s, %(password_hash)s)
RETURNING id, email, org_id, role, created_at;

-- name: user_by_email
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.password_hash, u.created_at, u.last_login_at,
       u.disabled_at
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE lower(u.email) = lower(%(email)s);

-- name: user_by_id
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.password_hash, u.created_at, u.last_login_at,
       u.disabled_at
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE u.id = %(user_id)s;

-- name: list_users
SELECT u.id, u.email, u.org_id, o.name AS org, u.role, u.created_at, u.last_login_at, u.disabled_at,
       (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id) AS tokens
FROM users u JOIN organisations o ON o.id = u.org_id
WHERE (%(org_id)s::bigint IS NULL OR u.org_id = %(org_id)s)
ORDER BY o.name, lower(u.email);

-- name: set_password_hash
UPDATE users SET password_hash = %(password_hash)s WHERE id = %(user_id)s RETURNING id;

-- name: set_time_zone
-- A person's own preference: one row by primary key, last write wins.
UPDATE users SET time_zone = %(time_zone)s WHERE id = %(user_id)s RETURNING id;

-- name: set_user_disabled
-- In the caller's transaction with delete_user_sessions and delete_user_tokens, so no session or
-- token of a disabled user outlives the commit. Scoped like delete_user.
UPDATE users
SET disabled_at = CASE WHEN %(disabled)s THEN coalesce(disabled_at, now()) END
WHERE id = %(user_id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s)
RETURNING id, email, role, disabled_at;

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
WHERE s.token_hash = %(token_hash)s AND s.expires_at > now() AND u.disabled_at IS NULL;

-- name: session_valid
-- Whether a session still lets its user in, without sliding its expiry: what a live stream
-- checks while it is open (a password change, a logout or a disabled user ends it).
SELECT 1 AS valid
FROM web_sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = %(token_hash)s AND s.expires_at > now() AND u.disabled_at IS NULL;

-- name: delete_session
DELETE FROM web_sessions WHERE token_hash = %(token_hash)s;

-- name: delete_user_sessions
DELETE FROM web_sessions WHERE user_id = %(user_id)s;

-- name: delete_expired_sessions
DELETE FROM web_sessions WHERE expires_at < now();

-- name: delete_user_tokens
DELETE FROM api_tokens WHERE user_id = %(user_id)s;

-- name: delete_long_expired_tokens
-- Expired tokens stay listed (as expired) for a while so their owner sees what stopped working.
DELETE FROM api_tokens WHERE expires_at < now() - interval '30 days';

-- name: insert_api_token
-- Only for an enabled user: the WHERE reads the user's row in the same statement, so a token
-- cannot be created for a user disabled a moment before.
INSERT INTO api_tokens (user_id, token_hash, name, expires_at)
SELECT id, %(token_hash)s, %(name)s, now() + %(expires_in)s::interval
FROM users WHERE id = %(user_id)s AND disabled_at IS NULL
RETURNING id, user_id, name, created_at, expires_at;

-- name: api_token_user
-- Expired tokens are found too, so the caller can say "expired" rather than "not valid".
SELECT t.id AS token_id, t.last_used_at, t.expires_at, t.expires_at <= now() AS expired,
       u.id, u.email, u.org_id, o.name AS org, o.display_name AS org_display_name, u.role
FROM api_tokens t
JOIN users u ON u.id = t.user_id
JOIN organisations o ON o.id = u.org_id
WHERE t.token_hash = %(token_hash)s AND u.disabled_at IS NULL;

-- name: list_api_tokens
-- One user's tokens, newest first; never their hashes.
SELECT t.id, t.name, t.created_at, t.last_used_at, t.expires_at,
       coalesce(t.expires_at <= now(), false) AS expired
FROM api_tokens t
WHERE t.user_id = %(user_id)s
ORDER BY t.created_at DESC, t.id DESC;

-- name: delete_api_token
-- Revocation. Scoped to a user (their own tokens), an organisation (its admins) or nothing
-- (operators, the CLI): a token outside the scope is "not found", never revoked.
DELETE FROM api_tokens t
USING users u
WHERE t.id = %(token_id)s AND u.id = t.user_id
  AND (%(user_id)s::bigint IS NULL OR t.user_id = %(user_id)s)
  AND (%(org_id)s::bigint IS NULL OR u.org_id = %(org_id)s)
RETURNING t.id, t.name, u.id AS user_id, u.email, u.role;

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
