-- Telemetry as the bridge writes it. One narrow row per (device, metric, time): numbers and
-- booleans in `value`, strings in `text_value`. Narrow numeric rows COPY and aggregate far
-- faster than JSONB documents (docs/benchmarks.md).

CREATE TABLE readings (
    time       timestamptz NOT NULL,
    device_id  text NOT NULL,
    metric     text NOT NULL,
    value      double precision,
    text_value text,
    seq        bigint,
    CHECK ((value IS NULL) <> (text_value IS NULL))
);
SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
-- The identity of a reading. A redelivered message yields the same keys and is dropped by
-- ON CONFLICT DO NOTHING, which is what makes ingest exactly-once. It also serves every
-- per-device history query.
CREATE UNIQUE INDEX readings_identity ON readings (device_id, metric, time);

-- Which metrics a device has and their JSON type, for exports and the API.
CREATE TABLE latest_values (
    device_id text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    metric    text NOT NULL,
    time      timestamptz NOT NULL,
    value     jsonb NOT NULL,
    PRIMARY KEY (device_id, metric)
);

CREATE TABLE device_state (
    device_id      text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    online         boolean NOT NULL DEFAULT false,
    last_seen      timestamptz,        -- last telemetry or status message
    status_changed timestamptz          -- last time `online` flipped
);

CREATE TABLE presence_events (
    id        bigint GENERATED ALWAYS AS IDENTITY,
    device_id text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    time      timestamptz NOT NULL DEFAULT now(),
    online    boolean NOT NULL,
    -- 'status': the device's status topic (its own word or its Last Will);
    -- 'telemetry': a message after it was marked offline; 'timeout': silence (worker).
    source    text NOT NULL CHECK (source IN ('status', 'telemetry', 'timeout')),
    PRIMARY KEY (device_id, time, id)
);

-- Messages that broke the device contract: kept with the raw payload, acknowledged, and
-- never allowed to stall the pipeline.
CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    received_at timestamptz NOT NULL,
    device_id   text,
    topic       text NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    payload     bytea NOT NULL,
    PRIMARY KEY (received_at, id)
);
SELECT create_hypertable('dead_letters', by_range('received_at', INTERVAL '1 day'));
CREATE INDEX dead_letters_by_device ON dead_letters (device_id, received_at DESC);
