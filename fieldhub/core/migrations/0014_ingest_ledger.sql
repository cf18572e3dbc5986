-- The ingest ledger: how a redelivered message without `ts` is stored once.
-- (docs/devices.md, "Redelivery of messages without ts").
--
-- A reading without ts is stamped with the bridge's receive time, so a copy of a message that
-- the broker sends again after the bridge committed it but before the broker got the PUBACK
-- (a crash between COMMIT and PUBACK, a lost connection) would be stamped anew and stored
-- twice. The broker resends such a message on the same session with the same packet id and
-- DUP=1. For every committed QoS 1 telemetry message whose readings took receive stamps, the
-- bridge records (session, packet id, hash of topic and payload, the stamp) in the batch
-- transaction; a DUP=1 copy that matches reuses the stamp, and its readings are duplicates.
-- One row per packet id at most: at most 65,535 rows per bridge session.
CREATE TABLE ingest_ledger (
    session      text     NOT NULL,
    packet_id    integer  NOT NULL CHECK (packet_id BETWEEN 1 AND 65535),
    payload_hash bytea    NOT NULL,
    -- The receive stamp in whole microseconds since the epoch, exactly as the bridge's
    -- receive clock gave it out (a float of seconds would not round-trip exactly).
    received_us  bigint   NOT NULL,
    -- The session's count of committed QoS 1 messages before this one's batch. A packet id
    -- comes back only after the broker took the PUBACK and sent 65,534 other ids, so a row
    -- that many committed messages old (less the Receive Maximum still in flight) may belong
    -- to an older message that happened to have the same topic and payload: it is not used.
    committed    bigint   NOT NULL,
    PRIMARY KEY (session, packet_id)
);

-- Per bridge session: its committed QoS 1 messages, counted only while it has ledger rows
-- (a fleet that always sends ts never writes here).
CREATE TABLE ingest_ledger_sessions (
    session   text   PRIMARY KEY,
    committed bigint NOT NULL DEFAULT 0
);
