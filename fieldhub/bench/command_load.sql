-- Named queries of the commands sent during `fieldhub bench failover` (command_load.py).

-- name: command_outcomes
-- Every command of this run (its name marks it), however its send ended: a send whose COMMIT
-- raised during the failover may still have committed (in doubt), and is counted here like
-- any other. Read once the sender has stopped; no ordering needed.
SELECT count(*) AS sent,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status IN ('failed', 'rejected', 'expired', 'cancelled')) AS failed,
       coalesce(extract(epoch FROM max(updated_at - created_at)
                        FILTER (WHERE status = 'succeeded')), 0)::float8 AS longest_s
FROM commands
WHERE name = %(name)s;
