-- Reading dead letters back for the people they concern (fieldhub/core/dead_letters.py).
-- The bridge writes them (fieldhub/bridge/ingest.sql copy_dead_letters); the worker deletes
-- them after FIELDHUB_RETENTION_DEAD_LETTERS_DAYS.

-- name: device_dead_letters
-- One device's letters by its key, never by its id: a device created again with the same id
-- has a new key and never sees its predecessor's letters. Newest first on (received_at, id),
-- a total order, so pages follow by keyset (`before_*`: the last row of the previous page);
-- dead_letters_by_device_key serves it. Only the first bytes of the payload are read.
SELECT id, received_at, device_id, topic, reason, detail,
       substring(payload FROM 1 FOR %(preview_bytes)s) AS payload_head,
       octet_length(payload) AS payload_size
FROM dead_letters
WHERE device_key = %(device_key)s
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)
  AND (%(before_time)s::timestamptz IS NULL
       OR (received_at, id) < (%(before_time)s::timestamptz, %(before_id)s::bigint))
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s;

-- name: recent_dead_letters
-- An operator's view of every letter, including those of unknown devices (no key), newest
-- first; bounded by the limit and, on a large table, best with --since (a chunk-excluding
-- range on the hypertable's time).
SELECT id, received_at, device_id, topic, reason, detail,
       substring(payload FROM 1 FOR %(preview_bytes)s) AS payload_head,
       octet_length(payload) AS payload_size
FROM dead_letters
WHERE (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s;
