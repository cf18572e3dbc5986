-- The analysis worker: rollups, alerts and their webhooks, job runs and scheduling state, and
-- bulk imports of uploaded files. See docs/analysis.md.

-- Rollups of numeric readings. Rows are upserted by the worker: a bucket is recomputed from
-- raw rows whenever new or late readings fall into it, so each row always equals the
-- aggregate of the raw rows of its bucket.
CREATE TABLE rollup_1m (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    min       double precision,
    max       double precision,
    avg       double precision,
    count     bigint NOT NULL,
    last      double precision,
    last_time timestamptz,
    PRIMARY KEY (device_id, metric, bucket)
);
SELECT create_hypertable('rollup_1m', by_range('bucket', INTERVAL '7 days'), create_default_indexes => false);

CREATE TABLE rollup_1h (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    min       double precision,
    max       double precision,
    avg       double precision,
    count     bigint NOT NULL,
    last      double precision,
    last_time timestamptz,
    PRIMARY KEY (device_id, metric, bucket)
);
SELECT create_hypertable('rollup_1h', by_range('bucket', INTERVAL '90 days'), create_default_indexes => false);

-- Per-job state that must survive restarts and be shared by every worker instance: the rollup
-- watermark, the insert counters of readings chunks last seen (late-data detection), ...
CREATE TABLE job_state (
    job        text PRIMARY KEY,
    state      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(state) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per run of a job on any worker; what operators see in `fieldhub jobs` and the web app.
CREATE TABLE job_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    duration_ms integer,
    outcome     text NOT NULL DEFAULT 'running' CHECK (outcome IN ('running', 'ok', 'error', 'skipped')),
    error       text,
    details     jsonb NOT NULL DEFAULT '{}',
    worker      text NOT NULL
);
CREATE INDEX job_runs_by_job ON job_runs (job, started_at DESC);
CREATE INDEX job_runs_recent ON job_runs (started_at DESC);

CREATE TABLE alert_rules (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id         bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    metric         text NOT NULL CHECK (length(metric) BETWEEN 1 AND 200),
    -- Either one device, or every device of the org whose labels contain label_key=label_value.
    device_id      text REFERENCES devices (device_id) ON DELETE CASCADE,
    label_key      text,
    label_value    text,
    condition      text NOT NULL CHECK (condition IN ('above', 'below', 'outside')),
    threshold_low  double precision,
    threshold_high double precision,
    for_seconds    integer NOT NULL DEFAULT 0 CHECK (for_seconds BETWEEN 0 AND 604800),
    severity       text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((device_id IS NULL) <> (label_key IS NULL)),
    CHECK ((label_key IS NULL) = (label_value IS NULL)),
    CHECK (condition <> 'above' OR threshold_high IS NOT NULL),
    CHECK (condition <> 'below' OR threshold_low IS NOT NULL),
    CHECK (condition <> 'outside' OR (threshold_low IS NOT NULL AND threshold_high IS NOT NULL
                                      AND threshold_low <= threshold_high))
);
CREATE INDEX alert_rules_by_org ON alert_rules (org_id, id);

CREATE TABLE alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    org_id          bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    device_id       text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acknowledged', 'cleared')),
    value           double precision,
    started_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by bigint REFERENCES users (id) ON DELETE SET NULL,
    cleared_at      timestamptz,
    message         text NOT NULL DEFAULT ''
);
-- One open alert per rule and device, however many readings breach the rule.
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule_id, device_id) WHERE state <> 'cleared';
CREATE INDEX alerts_by_org ON alerts (org_id, started_at DESC);

CREATE TABLE org_webhooks (
    org_id  bigint PRIMARY KEY REFERENCES organisations (id) ON DELETE CASCADE,
    url     text NOT NULL CHECK (url ~ '^https?://'),
    -- Signs each body (HMAC-SHA256, header X-Fieldhub-Signature); the receiver must know it,
    -- so it cannot be stored hashed.
    secret  text NOT NULL,
    enabled boolean NOT NULL DEFAULT true
);

-- The delivery log: one row per event to deliver, with every attempt appended to `attempts`.
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id          bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    alert_id        bigint REFERENCES alerts (id) ON DELETE SET NULL,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count   integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    attempts        jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_org ON webhook_deliveries (org_id, created_at DESC);

CREATE TABLE imports (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id          bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    -- The device of every line, unless the file names the device per line.
    device_id       text REFERENCES devices (device_id) ON DELETE CASCADE,
    filename        text NOT NULL DEFAULT '',
    format          text NOT NULL CHECK (format IN ('csv', 'ndjson', 'senml')),
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    total_bytes     bigint NOT NULL DEFAULT 0,
    processed_bytes bigint NOT NULL DEFAULT 0,
    processed_rows  bigint NOT NULL DEFAULT 0,
    rows_imported   bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    rows_per_s      double precision,
    -- [{line, reason}], capped (see analysis/imports.py) so a wholly bad file stays small.
    errors          jsonb NOT NULL DEFAULT '[]',
    error           text,
    created_by      bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX imports_by_org ON imports (org_id, created_at DESC);
CREATE INDEX imports_queued ON imports (created_at) WHERE status = 'queued';

CREATE TABLE import_files (
    import_id uuid PRIMARY KEY REFERENCES imports (id) ON DELETE CASCADE,
    content   bytea NOT NULL
);
