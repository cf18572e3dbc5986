-- Webhook delivery (fieldhub/analysis/webhooks.py). One pass runs at a time across all workers
-- (the job's advisory lock), so picking due rows needs no row locks: nobody else picks them.

-- name: due_orgs
-- Every organisation with a delivery due now, when its last attempt ended (its last turn) and
-- since when its longest-waiting delivery has been due: what the round-robin orders by. The
-- partial index webhook_deliveries_due finds the pending rows; deliveries of a disabled or
-- removed webhook wait and are not counted.
SELECT d.org_id, w.last_attempt_at, min(d.next_attempt_at) AS oldest
FROM webhook_deliveries d
JOIN org_webhooks w ON w.org_id = d.org_id AND w.enabled
WHERE d.status = 'pending' AND d.next_attempt_at <= now()
GROUP BY d.org_id, w.last_attempt_at

-- name: next_deliveries
-- The next delivery of each chosen organisation, with what it takes to send it: its oldest
-- due one (the id is the order they were queued in), so each organisation's events are
-- attempted in order.
SELECT DISTINCT ON (d.org_id)
       d.id, d.org_id, d.message_id, d.event, d.payload, d.attempt_count, w.url, w.secret,
       w.legacy_signature
FROM webhook_deliveries d
JOIN org_webhooks w ON w.org_id = d.org_id AND w.enabled
WHERE d.org_id = ANY(%(org_ids)s) AND d.status = 'pending' AND d.next_attempt_at <= now()
ORDER BY d.org_id, d.id

-- name: delivery_succeeded
UPDATE webhook_deliveries
SET status = 'delivered', delivered_at = now(), attempt_count = attempt_count + 1,
    attempts = attempts || %(attempt)s, last_error = NULL
WHERE id = %(id)s

-- name: delivery_failed
-- The last allowed attempt ends the delivery as 'failed'; any other waits for its backoff.
UPDATE webhook_deliveries
SET status = CASE WHEN attempt_count + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    attempt_count = attempt_count + 1,
    next_attempt_at = now() + make_interval(secs => %(retry_in_s)s),
    attempts = attempts || %(attempt)s, last_error = %(error)s
WHERE id = %(id)s
RETURNING status

-- name: took_turn
-- In the transaction that records the attempt; a webhook removed meanwhile is no row.
UPDATE org_webhooks SET last_attempt_at = now() WHERE org_id = %(org_id)s
