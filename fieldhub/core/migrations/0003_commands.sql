-- Commands to devices and their lifecycle:
--   queued -> sent -> delivered -> succeeded | failed | rejected
--   or expired (time to live ran out before a final answer) or cancelled (by a user).
-- The web app and the CLI only insert and cancel; the bridge, the only MQTT publisher,
-- publishes them (retained) and clears the retained message once a command is final.

CREATE TABLE commands (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id  text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    params     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    status     text NOT NULL DEFAULT 'queued' CHECK (status IN
                 ('queued', 'sent', 'delivered', 'succeeded', 'failed', 'rejected', 'expired', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    created_by bigint REFERENCES users (id) ON DELETE SET NULL,
    result     jsonb,
    error      text,
    -- A final command's retained message must be cleared on the broker; true once done.
    retained_cleared boolean NOT NULL DEFAULT false,
    CHECK (expires_at > created_at)
);
CREATE INDEX commands_by_device ON commands (device_id, created_at DESC);
-- The bridge's sweep: what is still to publish or still to clear.
CREATE INDEX commands_to_dispatch ON commands (created_at)
    WHERE status = 'queued' OR (status IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled') AND NOT retained_cleared);
CREATE INDEX commands_open ON commands (expires_at) WHERE status IN ('queued', 'sent', 'delivered');

CREATE TABLE command_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    status     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail     jsonb
);
CREATE INDEX command_events_by_command ON command_events (command_id, id);

-- Every status change is recorded, whoever makes it, and wakes the dispatcher and the live views.
CREATE FUNCTION record_command_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO command_events (command_id, status, detail)
        VALUES (NEW.id, NEW.status,
                CASE WHEN NEW.result IS NULL AND NEW.error IS NULL THEN NULL
                     ELSE jsonb_strip_nulls(jsonb_build_object('result', NEW.result, 'error', NEW.error)) END);
        PERFORM pg_notify('commands', NEW.device_id || ' ' || NEW.id::text || ' ' || NEW.status);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER commands_record_event
    AFTER INSERT OR UPDATE OF status ON commands
    FOR EACH ROW EXECUTE FUNCTION record_command_event();
