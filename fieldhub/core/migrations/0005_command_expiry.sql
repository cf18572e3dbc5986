-- Command expiry and the indexes the command API and dispatcher lean on.

-- Moves every open command whose time to live has run out to `expired` and returns how many.
-- Called by the bridge's command dispatcher on every sweep and by the analysis worker, so
-- expiry happens even while one of them is down. The row-level trigger of 0003 records each
-- change and NOTIFYs `commands`, which makes the dispatcher clear the retained message.
-- Concurrent callers are safe: a row an ack finished meanwhile no longer matches the WHERE
-- when the UPDATE re-checks it after waiting for the lock.
CREATE FUNCTION expire_commands() RETURNS integer LANGUAGE sql AS $$
    WITH expired AS (
        UPDATE commands
        SET status = 'expired', updated_at = now()
        WHERE status IN ('queued', 'sent', 'delivered') AND expires_at <= now()
        RETURNING 1
    )
    SELECT count(*)::integer FROM expired
$$;

-- The pending cap counts a device's open commands on every send.
CREATE INDEX commands_open_by_device ON commands (device_id)
    WHERE status IN ('queued', 'sent', 'delivered');

-- `fieldhub command list --status S` and the web app's filters over all devices.
CREATE INDEX commands_by_status ON commands (status, created_at DESC);
