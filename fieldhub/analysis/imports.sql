-- name: org_devices
-- An import resolves the organisation's device ids to their keys once, when it starts.
SELECT device_id, device_key FROM devices WHERE org_id = %(org_id)s

-- name: create_import
INSERT INTO imports (org_id, device_id, filename, format, total_bytes, created_by)
VALUES (%(org_id)s, %(device_id)s, %(filename)s, %(format)s, %(total_bytes)s, %(created_by)s)
RETURNING *

-- name: fast_compression
-- Uploads compress well; lz4 stores (and reads back) a 35 MiB CSV in a fraction of a second
-- where the default pglz takes seconds. For this transaction only.
SET LOCAL default_toast_compression = 'lz4'

-- name: store_file
INSERT INTO import_files (import_id, content) VALUES (%(id)s, %(content)s)

-- name: try_lock_import
-- Held by whoever runs the import, for as long as its connection lives: a 'running' import
-- whose lock is free belongs to a runner that died, and may be resumed by another.
SELECT pg_try_advisory_lock(%(namespace)s, hashtext(%(id)s::text)) AS locked

-- name: unlock_import
SELECT pg_advisory_unlock(%(namespace)s, hashtext(%(id)s::text))

-- name: import_candidates
SELECT id FROM imports WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT 20

-- name: start_import
UPDATE imports
SET status = 'running', started_at = now(), processed_bytes = 0, processed_rows = 0,
    rows_imported = 0, rows_rejected = 0, errors = '[]', error = NULL, finished_at = NULL
WHERE id = %(id)s AND status IN ('queued', 'running')
RETURNING *

-- name: load_file
SELECT content FROM import_files WHERE import_id = %(id)s

-- name: progress
UPDATE imports
SET processed_bytes = %(processed_bytes)s, processed_rows = %(processed_rows)s,
    rows_imported = %(rows_imported)s, rows_rejected = %(rows_rejected)s,
    rows_per_s = %(rows_per_s)s, errors = %(errors)s
WHERE id = %(id)s

-- name: finish_import
UPDATE imports
SET status = %(status)s, finished_at = now(), error = %(error)s
WHERE id = %(id)s
RETURNING *

-- name: drop_file
-- The readings are in; the upload itself is no longer needed and may be large.
DELETE FROM import_files WHERE import_id = %(id)s

-- name: get_import
SELECT id, org_id, device_id, filename, format, status, total_bytes, processed_bytes,
       processed_rows, rows_imported, rows_rejected, rows_per_s, errors, error, created_by,
       created_at, started_at, finished_at
FROM imports
WHERE id = %(id)s AND (%(org_id)s::bigint IS NULL OR org_id = %(org_id)s)

-- name: list_imports
-- Newest first on (created_at, id), a total order: the API pages by keyset with `before_*`.
SELECT id, org_id, device_id, filename, format, status, total_bytes, processed_bytes,
       processed_rows, rows_imported, rows_rejected, rows_per_s, error, created_at,
       started_at, finished_at
FROM imports
WHERE org_id = %(org_id)s
  AND (%(before_time)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_time)s::timestamptz, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
