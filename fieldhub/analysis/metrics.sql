-- The worker's metrics that come from the database (fieldhub/analysis/metrics.py), refreshed
-- every 10 s on one connection; both read indexes only and take no locks.

-- name: last_successes
-- The newest successful run of each job, whichever worker ran it: one index probe per job
-- (job_runs_by_job), stopping at the first 'ok' row from the newest down.
SELECT j.job,
       (SELECT extract(epoch FROM r.finished_at)
        FROM job_runs r
        WHERE r.job = j.job AND r.outcome = 'ok'
        ORDER BY r.started_at DESC
        LIMIT 1) AS finished_at
FROM unnest(%(jobs)s::text[]) AS j(job)

-- name: webhook_backlog
-- Pending deliveries (the partial index webhook_deliveries_due holds exactly these) and how
-- long the oldest has waited.
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_s
FROM webhook_deliveries
WHERE status = 'pending'
