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
