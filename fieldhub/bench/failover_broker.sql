-- Named queries of the `broker` failover scenario (fieldhub/bench/failover_broker.py), run on
-- the lab's ops host. Read-only; plain snapshots, no locks.

-- name: homed_on
-- The load devices homed on a broker: the ones whose broker the scenario kills.
SELECT device_id FROM devices
WHERE broker = %(broker)s AND device_id LIKE %(like)s
ORDER BY device_id;

-- name: stored_of
-- Which of these (device, seq) messages are stored (one reading per message carries
-- `temperature`). `since` bounds the scan to the chunks written after the kill.
SELECT DISTINCT d.device_id, r.seq
FROM readings r
JOIN devices d USING (device_key)
JOIN unnest(%(devices)s::text[], %(seqs)s::bigint[]) AS m(device_id, seq)
  ON m.device_id = d.device_id AND m.seq = r.seq
WHERE r.metric = 'temperature' AND r.time >= %(since)s;
