-- Retained commands and twin documents on every broker (issue #13, docs/scaling.md "Several
-- brokers"). A device whose broker host dies reconnects to a standby broker and must find its
-- pending commands and its twin there, so every broker's dispatcher publishes every device's
-- retained messages, not only those of the devices homed on its broker, and what each broker
-- holds is recorded per (thing, broker).
--
-- Why a row per (command, broker) plus one flag per command rather than only the rows: the
-- dispatchers' sweeps must stay index-driven at 100,000 devices. A sweep asks "what is still
-- to publish (or clear) on my broker"; answered from the publication rows alone it is an
-- anti-join over every open command (most of them long published everywhere), run by every
-- broker's dispatcher every sweep. The flag keeps the candidates to a small partial index:
-- commands not yet published on every broker (commands_to_publish_everywhere) and final
-- commands not yet cleared on every broker (commands_to_dispatch of 0003, `retained_cleared`
-- now meaning "on every broker"). Each dispatcher takes the candidates its broker lacks (a
-- primary key probe per candidate) and records its own broker; the last broker to record
-- sets the flag. In the steady state both partial indexes are nearly empty; while a broker is
-- down they hold what happened during the outage, which its dispatcher works off when it is
-- back. Per-broker arrays on the command row would need the number of brokers in the index
-- predicate (the database does not know it) and would rewrite the command row per broker.
-- Measured (EXPLAIN ANALYZE, 100,000 devices, 200,000 commands of which 100,000 sent and
-- published everywhere, 300 new): a broker's publish sweep read the 300 through
-- commands_to_publish_everywhere in 2.8 ms, its clear sweep 0.2 ms, its twin sweep 0.05 ms.

ALTER TABLE commands
    -- Every configured broker acknowledged (PUBACK) the retained command; the dispatchers
    -- stop looking at it. False for existing open commands, so an upgrade publishes them on
    -- every broker once.
    ADD COLUMN published_everywhere boolean NOT NULL DEFAULT false;

CREATE INDEX commands_to_publish_everywhere ON commands (created_at, id)
    WHERE NOT published_everywhere AND status IN ('queued', 'sent', 'delivered');

-- What one broker acknowledged of one command: the retained publish (published_at), and the
-- empty retained publish that cleared it once the command was final (cleared_at). Keyed by
-- command first: the sweeps probe (candidate, my broker), the record functions count a
-- command's brokers, and deleting a device cascades by command.
CREATE TABLE command_publications (
    command_id   uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    broker       text NOT NULL,
    published_at timestamptz,
    cleared_at   timestamptz,
    PRIMARY KEY (command_id, broker)
);

-- A broker's PUBACK of a command's retained message, in one statement (the dispatcher's
-- publish workers share one autocommit connection, so no multi-statement transaction).
-- The command row is locked first, so two brokers recording at once are serialised and the
-- second one's count sees the first one's row (each statement of a plpgsql function takes a
-- new snapshot). The status change is the caller's (fieldhub.core.command_states
-- .on_published, passed as the statuses that move and where to: queued -> sent), so an ack
-- that overtook the PUBACK is never overwritten. A final command published again (a
-- republish racing its final ack) is no longer cleared everywhere.
CREATE FUNCTION record_command_published(
    p_id uuid, p_broker text, p_brokers text[], p_moves_from text[], p_moves_to text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current text;
BEGIN
    SELECT status INTO current FROM commands WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- deleted with its device meanwhile
    END IF;
    INSERT INTO command_publications (command_id, broker, published_at)
    VALUES (p_id, p_broker, now())
    ON CONFLICT (command_id, broker) DO UPDATE SET published_at = now(), cleared_at = NULL;
    IF current = ANY(p_moves_from) THEN
        UPDATE commands SET status = p_moves_to, updated_at = now() WHERE id = p_id;
    ELSIF current NOT IN ('queued', 'sent', 'delivered') THEN
        UPDATE commands SET retained_cleared = false WHERE id = p_id AND retained_cleared;
    END IF;
    UPDATE commands SET published_everywhere = true
    WHERE id = p_id AND NOT published_everywhere
      AND (SELECT count(*) FROM command_publications p
           WHERE p.command_id = p_id AND p.broker = ANY(p_brokers)
             AND p.published_at IS NOT NULL) >= cardinality(p_brokers);
END $$;

-- A broker's PUBACK of the empty retained message of a final command; the last of the
-- brokers sets retained_cleared. Locked and counted as above.
CREATE FUNCTION record_command_cleared(p_id uuid, p_broker text, p_brokers text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM commands WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO command_publications (command_id, broker, cleared_at)
    VALUES (p_id, p_broker, now())
    ON CONFLICT (command_id, broker) DO UPDATE SET cleared_at = now();
    UPDATE commands SET retained_cleared = true
    WHERE id = p_id AND NOT retained_cleared
      AND (SELECT count(*) FROM command_publications p
           WHERE p.command_id = p_id AND p.broker = ANY(p_brokers)
             AND p.cleared_at IS NOT NULL) >= cardinality(p_brokers);
END $$;

-- Twins likewise: what each broker holds of a device's twin (its revision, and the desired
-- version and delta last given to it, so an unchanged message is not sent again), and
-- device_twins.published_revision now means "held by every broker up to". The sweep's
-- candidates stay the partial index device_twins_to_publish of 0012.
CREATE TABLE twin_publications (
    device_id       text NOT NULL REFERENCES device_twins (device_id) ON DELETE CASCADE,
    broker          text NOT NULL,
    revision        bigint NOT NULL,
    desired_version bigint NOT NULL,
    delta           jsonb NOT NULL,
    PRIMARY KEY (device_id, broker)
);

CREATE FUNCTION record_twin_published(
    p_device text, p_broker text, p_brokers text[], p_revision bigint,
    p_desired_version bigint, p_delta jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM device_twins WHERE device_id = p_device FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- greatest(): a change made while we published keeps the twin's revision ahead.
    INSERT INTO twin_publications AS tp (device_id, broker, revision, desired_version, delta)
    VALUES (p_device, p_broker, p_revision, p_desired_version, p_delta)
    ON CONFLICT (device_id, broker) DO UPDATE
    SET revision = greatest(tp.revision, EXCLUDED.revision),
        desired_version = EXCLUDED.desired_version, delta = EXCLUDED.delta;
    UPDATE device_twins t
    SET published_revision = greatest(t.published_revision, m.revision)
    FROM (SELECT min(p.revision) AS revision, count(*) AS brokers FROM twin_publications p
          WHERE p.device_id = p_device AND p.broker = ANY(p_brokers)) m
    WHERE t.device_id = p_device AND m.brokers >= cardinality(p_brokers);
END $$;

-- The old single-broker record moves into twin_publications; every twin is published again
-- (to every broker) once after the upgrade.
ALTER TABLE device_twins DROP COLUMN published_desired_version, DROP COLUMN published_delta;
UPDATE device_twins SET published_revision = -1;

-- The bridge accounts now also read devices/+/commands/+: the reconciler lists a broker's
-- retained commands through them (fieldhub.bridge.app.Bridge.retained_command_topics).
-- Accounts with exactly the rights `fieldhub service-account bridges` gave before get the new
-- ones here, so an upgrade needs no step of its own (auth-sync renders them at once: the
-- registry trigger); an account whose rights an operator changed is left as it is.
UPDATE service_accounts
SET acl = array_replace(acl, 'write devices/+/commands/+', 'readwrite devices/+/commands/+')
WHERE acl = ARRAY[
    'read devices/+/telemetry',
    'read devices/+/telemetry/senml',
    'read devices/+/status',
    'read devices/+/commands/+/ack',
    'write devices/+/commands/+',
    'read devices/+/twin/reported',
    'write devices/+/twin/desired',
    'write devices/+/twin/delta',
    'read $SYS/broker/publish/messages/dropped',
    'read $SYS/broker/clients/connected',
    'readwrite fieldhub/control/tombstone/+'
]::text[];
