-- The ingest ledger: how a redelivered message without `ts` is stored once.
-- (docs/devices.md, "Redelivery of messages without ts").
--
-- A reading without ts is stamped with the bridge's receive time, so a copy of a message that
-- the broker sends again after the bridge committed it but before the broker got the PUBACK
-- (a crash between COMMIT and PUBACK, a lost connection) would be stamped anew and stored
-- twice. The broker resends such a message on the same session with the same packet id and
-- DUP=1. For every committed QoS 1 telemetry message whose readings took receive stamps, the
-- bridge records (session, packet id, checksum of topic and payload, the stamp) in the batch
-- transaction; a DUP=1 copy that matches reuses the stamp, and its readings are duplicates.
-- One row per committed batch that had such messages, not one per message: measured, an
-- upsert per message cost PostgreSQL about 9 us per message without ts (half as much again
-- as the rest of its ingest), one row per batch next to nothing. Only DUP=1 copies read it.
CREATE TABLE ingest_ledger (
    session    text   NOT NULL,
    -- The session's count of committed QoS 1 messages before this batch. A packet id comes
    -- back only after the broker took the PUBACK and sent 65,534 other ids, so a batch that
    -- many committed messages old (less the Receive Maximum still in flight) may hold an
    -- older message that happened to have the same topic and payload: it is not used, and
    -- it is deleted when the session's next batch is recorded.
    committed  bigint NOT NULL,
    -- Packed, entry i of each: the packet id (2 bytes), the checksum of topic and payload
    -- (8 bytes: CRC-32 and Adler-32, fieldhub.bridge.ledger.payload_hash), the receive stamp
    -- in whole microseconds since the epoch (8 bytes, exactly as the bridge's receive clock
    -- gave it out), all big-endian.
    packet_ids bytea  NOT NULL,
    hashes     bytea  NOT NULL,
    stamps     bytea  NOT NULL,
    PRIMARY KEY (session, committed)
);

-- Per bridge session: its committed QoS 1 messages, counted only while it has ledger rows
-- (a fleet that always sends ts never writes here).
CREATE TABLE ingest_ledger_sessions (
    session   text   PRIMARY KEY,
    committed bigint NOT NULL DEFAULT 0
);
