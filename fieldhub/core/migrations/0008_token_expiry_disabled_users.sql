-- API tokens that end by themselves, and users that can be disabled (issue #11).

-- NULL: the token does not expire. An expired token is refused (401) and stays listed, marked
-- expired, until housekeeping deletes it 30 days later (users.prune). Revoking a token deletes
-- its row: a revoked token has nothing left to do, and its hash must not linger.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
-- The account page and the admins' token page list one user's tokens.
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

-- NULL: enabled. A disabled user cannot log in and has no sessions or tokens (disabling deletes
-- them in the same transaction); the account itself stays, to be enabled again.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
