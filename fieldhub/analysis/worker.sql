-- name: try_lock
-- Session-level: held across the job's own commits, released by unlock or when the
-- connection dies, so a crashed worker never leaves a job locked.
SELECT pg_try_advisory_lock(%(namespace)s, hashtext(%(job)s)) AS locked

-- name: unlock
SELECT pg_advisory_unlock(%(namespace)s, hashtext(%(job)s)) AS unlocked

-- name: last_start
SELECT max(started_at) AS started_at, now() AS now
FROM job_runs
WHERE job = %(job)s

-- name: abandon_running
-- Only the lock holder calls this, so a 'running' row here belongs to a worker that died.
UPDATE job_runs
SET outcome = 'error', finished_at = clock_timestamp(),
    error = 'the worker stopped during this run'
WHERE job = %(job)s AND outcome = 'running'

-- name: start_run
INSERT INTO job_runs (job, worker) VALUES (%(job)s, %(worker)s)
RETURNING id, started_at

-- name: finish_run
UPDATE job_runs
SET finished_at = clock_timestamp(),
    duration_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::integer,
    outcome = %(outcome)s, error = %(error)s, details = %(details)s
WHERE id = %(id)s

-- name: recent_runs
SELECT id, job, started_at, finished_at, duration_ms, outcome, error, details, worker
FROM job_runs
WHERE (%(job)s::text IS NULL OR job = %(job)s)
ORDER BY started_at DESC, id DESC
LIMIT %(limit)s

-- name: get_state
SELECT state FROM job_state WHERE job = %(job)s

-- name: put_state
INSERT INTO job_state (job, state, updated_at) VALUES (%(job)s, %(state)s, now())
ON CONFLICT (job) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
