-- Deleting a device leaves nothing behind for the next owner of its id (issue #11,
-- docs/devices.md "Deleting a device", design in docs/security.md "Deleted devices").
--
-- registry.delete_device deletes the device row and, in the same short transaction, writes a
-- tombstone: what the brokers and the purge job still have to do for the deleted key. It
-- never deletes readings itself (a DELETE through the hypertables would hold locks the
-- bridges wait on); the worker's purge job does that in bounded batches afterwards.

CREATE TABLE device_tombstones (
    device_key  bigint PRIMARY KEY,          -- the deleted device's key; never reused
    device_id   text NOT NULL,               -- the id it had, which a new device may take
    org_id      bigint NOT NULL,             -- the organisation it belonged to (no FK: history)
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    -- Commands whose retained messages may still be on a broker (devices/{id}/commands/{c}).
    command_ids uuid[] NOT NULL DEFAULT '{}',
    purged_at   timestamptz,                 -- readings, rollups and dead letters deleted
    purged_rows bigint
);
CREATE INDEX device_tombstones_by_id ON device_tombstones (device_id, deleted_at DESC);
CREATE INDEX device_tombstones_unpurged ON device_tombstones (deleted_at) WHERE purged_at IS NULL;

-- Per broker a deleted device may have connected to (every configured broker), the steps in
-- order; NULL = not yet. A re-created device with the same id is rendered into a broker's
-- password file only when every row of that id for that broker has session_cleared_at.
CREATE TABLE tombstone_brokers (
    device_key          bigint NOT NULL REFERENCES device_tombstones ON DELETE CASCADE,
    broker              text NOT NULL,
    device_id           text NOT NULL,       -- copied, so auth-sync's render needs no join
    cut_off_at          timestamptz,         -- auth-sync: entry gone, broker reloaded
    retained_cleared_at timestamptz,         -- dispatcher: retained topics cleared, marker out
    drained_at          timestamptz,         -- every bridge session passed the marker
    session_cleared_at  timestamptz,         -- auth-sync: the stored session reaped
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_key, broker)
);
CREATE INDEX tombstone_brokers_open ON tombstone_brokers (broker, device_id)
    WHERE session_cleared_at IS NULL;

-- The bridges' durable sessions per broker (session = the bridge's account, svc.bridge-N),
-- refreshed by each bridge while it runs; a session seen within the broker's session expiry
-- still has a queue on that broker that may hold the old device's messages.
CREATE TABLE bridge_sessions (
    broker  text NOT NULL,
    session text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (broker, session)
);

-- Which bridge session has passed which tombstone's marker in its message stream: written in
-- the batch transaction that commits the marker, so "passed" means every message before it
-- is stored or dead-lettered.
CREATE TABLE tombstone_passes (
    device_key bigint NOT NULL,
    broker     text NOT NULL,
    session    text NOT NULL,
    passed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_key, broker, session),
    FOREIGN KEY (device_key, broker) REFERENCES tombstone_brokers ON DELETE CASCADE
);

-- Progress wakes the next step's owner at once (auth-sync, the dispatcher, the bridges), so a
-- re-registration waits seconds, not a sweep interval. Payload: the broker.
CREATE FUNCTION notify_tombstones() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tombstones', NEW.broker);
    RETURN NULL;
END $$;
CREATE TRIGGER tombstone_brokers_changed AFTER INSERT OR UPDATE ON tombstone_brokers
    FOR EACH ROW EXECUTE FUNCTION notify_tombstones();
CREATE TRIGGER tombstone_passes_changed AFTER INSERT ON tombstone_passes
    FOR EACH ROW EXECUTE FUNCTION notify_tombstones();

-- Open live streams of the deleted device end at once (fieldhub.web.live): the web app's hub
-- LISTENs and tells the streams of this key. Payload: the deleted key.
CREATE FUNCTION notify_device_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('device_deleted', NEW.device_key::text);
    RETURN NULL;
END $$;
CREATE TRIGGER device_tombstones_notify AFTER INSERT ON device_tombstones
    FOR EACH ROW EXECUTE FUNCTION notify_device_deleted();
