-- Named queries of the hosts lab (fieldhub/bench/hosts_lab.py): what the load devices
-- readings look like in the database, counted against the simulator's ledger. One reading
-- per message carries `temperature`, so that metric counts messages. Readings are keyed by the
-- device's key; the load devices are found by their ids. Read-only; no locks beyond a plain
-- snapshot.

-- name: stored_messages
SELECT count(*) AS n
FROM readings JOIN devices USING (device_key)
WHERE metric = 'temperature' AND device_id LIKE %(like)s;

-- Messages published up to a moment, by their own timestamp (the device's `ts`), so the
-- count compares with the ledger's lines of the same `ts`.
-- name: stored_messages_until
SELECT count(*) AS n
FROM readings JOIN devices USING (device_key)
WHERE metric = 'temperature' AND device_id LIKE %(like)s AND time <= %(until)s;

-- Every stored message and how many copies of it: the final tally per device and message.
-- name: stored_copies
SELECT device_id, seq, count(*) AS copies
FROM readings JOIN devices USING (device_key)
WHERE metric = 'temperature' AND device_id LIKE %(like)s AND seq IS NOT NULL
GROUP BY device_id, seq;

-- name: devices_reporting
SELECT count(*) AS n
FROM latest_values JOIN devices USING (device_key)
WHERE metric = 'temperature' AND device_id LIKE %(like)s;

-- Where the web app's live-update listeners connect from: each web process that served a
-- live view holds one (application_name fieldhub-web-live).
-- name: live_listeners
SELECT DISTINCT host(client_addr) AS address
FROM pg_stat_activity
WHERE application_name = 'fieldhub-web-live' AND client_addr IS NOT NULL;
