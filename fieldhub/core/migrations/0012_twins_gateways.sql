-- Device twins (desired and reported state) and gateways (one device speaking for others).
-- docs/devices.md ("Twin", "Gateways") is the contract these tables keep.

-- One row per device that has a twin: created by the first desired change or the first
-- report. Both documents are JSON objects that never hold null (RFC 7396 merge patches
-- delete a key with null). desired_version counts desired changes (0: never set);
-- reported_version is the desired version the device says it has applied, so it can never
-- be ahead of desired_version. reported_seq is the optional order number of the last
-- applied report, compared only between reports of one version.
CREATE TABLE device_twins (
    device_id          text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    desired            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(desired) = 'object'),
    desired_version    bigint NOT NULL DEFAULT 0 CHECK (desired_version >= 0),
    desired_updated_at timestamptz,
    reported           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(reported) = 'object'),
    reported_version   bigint NOT NULL DEFAULT 0 CHECK (reported_version >= 0),
    reported_seq       bigint,
    reported_at        timestamptz,
    -- Bumped by every change of either document. The bridge's dispatcher publishes the
    -- retained desired and delta messages of every twin whose published_revision is behind,
    -- and records what the broker holds (NULL: unknown, publish again).
    revision                  bigint NOT NULL DEFAULT 0,
    published_revision        bigint NOT NULL DEFAULT -1,
    published_desired_version bigint,
    published_delta           jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (reported_version <= desired_version)
);
-- The dispatcher's sweep: what the broker does not have yet.
CREATE INDEX device_twins_to_publish ON device_twins (device_id)
    WHERE published_revision < revision;

-- Who changed desired state, when, and how: one row per new desired version.
CREATE TABLE twin_desired_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    version    bigint NOT NULL,
    patch      jsonb NOT NULL CHECK (jsonb_typeof(patch) = 'object'),
    -- The person (kept as text too: the change stays attributed after the user is deleted).
    changed_by bigint REFERENCES users (id) ON DELETE SET NULL,
    actor      text NOT NULL,
    source     text NOT NULL CHECK (source IN ('web', 'api', 'cli')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, version)
);

-- Every twin change wakes the dispatcher (payload: the device id).
CREATE FUNCTION notify_twin_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('twins', NEW.device_id);
    RETURN NULL;
END $$;

CREATE TRIGGER device_twins_changed
    AFTER INSERT OR UPDATE OF revision ON device_twins
    FOR EACH ROW EXECUTE FUNCTION notify_twin_changed();

-- Gateways: a child device is attached to at most one gateway of its own organisation (the
-- code checks the organisation, the one level and the broker under row locks). Deleting the
-- gateway detaches its children.
ALTER TABLE devices
    ADD COLUMN gateway_id text REFERENCES devices (device_id) ON DELETE SET NULL,
    ADD CONSTRAINT devices_not_own_gateway CHECK (gateway_id <> device_id);
CREATE INDEX devices_by_gateway ON devices (gateway_id, device_id) WHERE gateway_id IS NOT NULL;

-- The broker's ACL grants a gateway its children's topics, so attaching and detaching are
-- changes of who may do what: they wake the auth sync like any other registry change.
CREATE TRIGGER devices_gateway_changed
    AFTER UPDATE OF gateway_id ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_changed();
