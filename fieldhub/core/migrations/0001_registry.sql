-- The registry: organisations (tenants), their devices, the backend's own broker accounts,
-- and the people who log in to the web app. The database is the single source of truth;
-- the broker's password and ACL files are generated from these tables.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE organisations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The handle operators type (`--org acme`); the display name is for people.
    name         text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    -- The device contract: the id is the MQTT username and client id.
    device_id         text PRIMARY KEY CHECK (device_id ~ '^[a-z0-9_-]{1,64}$'),
    org_id            bigint NOT NULL REFERENCES organisations (id) ON DELETE RESTRICT,
    display_name      text NOT NULL DEFAULT '',
    labels            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    enabled           boolean NOT NULL DEFAULT true,
    -- Which broker the device is homed on (several brokers: see docs/scaling.md).
    broker            text NOT NULL DEFAULT 'broker-1',
    -- Mosquitto's own PBKDF2-SHA512 format ($7$...): the only form the secret is kept in.
    password_hash     text NOT NULL,
    secret_rotated_at timestamptz NOT NULL DEFAULT now(),
    -- No message for this long marks the device offline (analysis worker).
    offline_after_s   integer NOT NULL DEFAULT 300 CHECK (offline_after_s BETWEEN 10 AND 2592000),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_by_org ON devices (org_id, device_id);
CREATE INDEX devices_by_label ON devices USING gin (labels jsonb_path_ops);

-- Broker accounts of the backend itself (bridge, load generators). Their usernames contain a
-- dot, which no device id can, so the two namespaces never collide.
CREATE TABLE service_accounts (
    username      text PRIMARY KEY CHECK (username ~ '^svc\.[a-z0-9_-]{1,60}$'),
    password_hash text NOT NULL,
    -- Mosquitto ACL lines for this account only, e.g. 'read devices/+/telemetry'.
    acl           text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Any change to who may connect wakes the broker auth sync. Statement-level, so a bulk import
-- of 10,000 devices sends one notification, not 10,000.
CREATE FUNCTION notify_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('registry_changed', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER devices_registry_changed
    AFTER INSERT OR DELETE OR UPDATE OF device_id, enabled, password_hash, broker ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();
CREATE TRIGGER service_accounts_registry_changed
    AFTER INSERT OR UPDATE OR DELETE ON service_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    org_id        bigint NOT NULL REFERENCES organisations (id) ON DELETE RESTRICT,
    role          text NOT NULL CHECK (role IN ('operator', 'admin', 'member', 'viewer')),
    password_hash text NOT NULL,  -- Argon2id
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

-- Server-side web sessions: logout and a password change delete rows, which ends those
-- sessions everywhere at once. Only a hash of the cookie value is stored.
CREATE TABLE web_sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX web_sessions_by_user ON web_sessions (user_id);

-- API tokens: 256 random bits, so a fast hash (SHA-256) is enough to make a stolen table useless.
CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- Login throttling shared by every gunicorn worker and web host.
CREATE TABLE login_failures (
    key          text NOT NULL,  -- 'email:<lower email>' or 'ip:<address>'
    failed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_by_key ON login_failures (key, failed_at);
