-- name: rule_targets
-- Every enabled rule with each enabled device it covers, the metric's latest reading, the
-- reading that was current `for_seconds` ago (the anchor) and whether every reading since the
-- anchor breaches. Readings are the device's by its key (never an earlier device's of the
-- same id), of the rule's metric in whatever unit the device sends it. All three are index
-- range scans of readings_identity's (device_key, metric, time) prefix.
WITH targets AS (
    SELECT r.id AS rule_id, r.org_id, r.name, r.metric, r.condition, r.threshold_low,
           r.threshold_high, r.for_seconds, r.severity, d.device_id, d.device_key
    FROM alert_rules r
    JOIN devices d ON d.org_id = r.org_id AND d.enabled
     AND (d.device_id = r.device_id
          OR (r.label_key IS NOT NULL AND d.labels ->> r.label_key = r.label_value))
    WHERE r.enabled
)
SELECT t.*, latest.time AS latest_time, latest.value AS latest_value,
       anchor.time AS anchor_time, anchor.value AS anchor_value,
       coalesce(since.all_breach, true) AS all_breach_since_anchor,
       open_alert.id AS open_alert_id
FROM targets t
JOIN LATERAL (
    SELECT time, value FROM readings
    WHERE device_key = t.device_key AND metric = t.metric AND value IS NOT NULL
    ORDER BY time DESC LIMIT 1
) latest ON true
LEFT JOIN LATERAL (
    SELECT time, value FROM readings
    WHERE device_key = t.device_key AND metric = t.metric AND value IS NOT NULL
      AND time <= now() - make_interval(secs => t.for_seconds)
    ORDER BY time DESC LIMIT 1
) anchor ON true
LEFT JOIN LATERAL (
    SELECT bool_and(CASE t.condition
                        WHEN 'above' THEN value > t.threshold_high
                        WHEN 'below' THEN value < t.threshold_low
                        ELSE value < t.threshold_low OR value > t.threshold_high END) AS all_breach
    FROM readings
    WHERE device_key = t.device_key AND metric = t.metric AND value IS NOT NULL
      AND time > anchor.time
) since ON true
LEFT JOIN alerts open_alert
       ON open_alert.rule_id = t.rule_id AND open_alert.device_id = t.device_id
      AND open_alert.state <> 'cleared'

-- name: fire_alert
-- The partial unique index makes this a no-op if another evaluation already opened it.
INSERT INTO alerts (rule_id, org_id, device_id, state, value, message)
VALUES (%(rule_id)s, %(org_id)s, %(device_id)s, 'active', %(value)s, %(message)s)
ON CONFLICT (rule_id, device_id) WHERE state <> 'cleared' DO NOTHING
RETURNING id, org_id, state

-- name: clear_alert
UPDATE alerts SET state = 'cleared', cleared_at = now(), value = %(value)s
WHERE id = %(id)s AND state <> 'cleared'
RETURNING id, org_id, state

-- name: clear_untargeted
-- Open alerts whose rule was disabled or whose device no longer matches (label changed,
-- device disabled) clear rather than stay open forever.
UPDATE alerts a SET state = 'cleared', cleared_at = now()
WHERE a.state <> 'cleared'
  AND NOT EXISTS (
      SELECT 1 FROM alert_rules r JOIN devices d ON d.org_id = r.org_id AND d.enabled
      WHERE r.id = a.rule_id AND r.enabled AND d.device_id = a.device_id
        AND (d.device_id = r.device_id
             OR (r.label_key IS NOT NULL AND d.labels ->> r.label_key = r.label_value)))
RETURNING id, org_id, state

-- name: notify_alert
SELECT pg_notify('alerts', %(org_id)s::text || ' ' || %(id)s::text || ' ' || %(state)s)

-- name: alert_event
-- What a webhook receiver gets: the alert with its rule, for the org's configured endpoint.
SELECT a.id, a.org_id, a.device_id, a.state, a.value, a.message, a.started_at,
       a.acknowledged_at, a.cleared_at, r.id AS rule_id, r.name AS rule_name, r.metric,
       r.condition, r.threshold_low, r.threshold_high, r.for_seconds, r.severity
FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
WHERE a.id = %(id)s

-- name: enqueue_delivery
INSERT INTO webhook_deliveries (org_id, alert_id, event, payload)
SELECT w.org_id, %(alert_id)s, %(event)s, %(payload)s
FROM org_webhooks w
WHERE w.org_id = %(org_id)s AND w.enabled
RETURNING id
