-- HTTP ingest (docs/devices.md, "HTTP ingest"): devices that cannot keep an MQTT connection
-- POST their telemetry to /api/v1/ingest/*, through the same decoder and readings writer.

-- A request sent with an `Idempotency-Key` is stored once: the first one inserts its key here
-- in the transaction that writes its readings, and a retry finds the key and gets the first
-- answer back (status and body) without writing anything, so readings without `ts` keep the
-- receive stamps of the first attempt. `body_sha256` tells a retry (same body) from a reuse of
-- the key for another body (refused, 422). Keys are the device's own: two devices may use the
-- same key. The row goes with its device (a device registered again under the same id is
-- another device, with another key).
-- Retention: 24 hours from `created_at` (the housekeeping job prunes older keys); a retry
-- later than that is taken as a new request.
CREATE TABLE ingest_idempotency (
    device_key   bigint NOT NULL REFERENCES devices (device_key) ON DELETE CASCADE,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    body_sha256  bytea NOT NULL,
    status       smallint NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_key, key)
);
CREATE INDEX ingest_idempotency_by_age ON ingest_idempotency (created_at);

-- The per-device request budget: a fixed one-second window per device, counted across every
-- web worker (a limit kept in each worker's memory would grow with the number of workers).
-- UNLOGGED: after a crash the counts start again from zero, which is harmless, and the hot
-- update writes no WAL.
CREATE UNLOGGED TABLE ingest_rate (
    device_key   bigint PRIMARY KEY REFERENCES devices (device_key) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    requests     integer NOT NULL
);

-- Certificate devices (docs/devices.md, "Certificate devices"): every certificate fieldhub's
-- device CA issued, so that a revocation list can be made from the registry alone. Not a
-- foreign key to the device: a deleted device's certificates must stay listed (revoked)
-- until they expire, or the CRL would forget them while they are still valid.
CREATE TABLE device_certificates (
    serial        text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]{1,40}$'),
    device_key    bigint NOT NULL,
    device_id     text NOT NULL,
    fingerprint   text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    not_after     timestamptz NOT NULL,
    key_type      text NOT NULL,
    state         text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    -- RFC 5280 reason: superseded (rotated), cessationOfOperation (device deleted).
    revoke_reason text CHECK (revoke_reason IN ('superseded', 'cessationOfOperation')),
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL AND revoke_reason IS NOT NULL))
);
CREATE INDEX device_certificates_by_device ON device_certificates (device_key, state);
CREATE INDEX device_certificates_revoked ON device_certificates (not_after)
    WHERE state = 'revoked';

-- Every way a device is deleted (CLI, admin page, API, cascades) revokes its certificates.
CREATE FUNCTION revoke_deleted_device_certificates() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_certificates
    SET state = 'revoked', revoked_at = now(), revoke_reason = 'cessationOfOperation'
    WHERE device_key = OLD.device_key AND state = 'active';
    RETURN OLD;
END $$;
CREATE TRIGGER devices_revoke_certificates AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION revoke_deleted_device_certificates();

-- A certificate issued or revoked changes who may connect: the auth sync renders the CRL.
CREATE TRIGGER device_certificates_registry_changed
    AFTER INSERT OR UPDATE OR DELETE ON device_certificates
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();
