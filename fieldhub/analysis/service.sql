-- Every query of the web-facing API is scoped to one organisation.

-- name: acknowledge_alert
UPDATE alerts
SET state = 'acknowledged', acknowledged_at = now(), acknowledged_by = %(user_id)s
WHERE id = %(id)s AND org_id = %(org_id)s AND state = 'active'
RETURNING id, org_id, state

-- name: alert_state
-- Why an acknowledgement matched no row: no such alert in the organisation, or its state.
SELECT id, org_id, state FROM alerts WHERE id = %(id)s AND org_id = %(org_id)s

-- name: list_rules
-- Oldest first by id; the API pages by keyset (`after`, the last id), the admin page reads all
-- (limit NULL).
SELECT id, org_id, name, metric, device_id, label_key, label_value, condition, threshold_low,
       threshold_high, for_seconds, severity, enabled, created_at
FROM alert_rules
WHERE org_id = %(org_id)s AND (%(after)s::bigint IS NULL OR id > %(after)s)
ORDER BY id
LIMIT %(limit)s

-- name: get_rule
SELECT id, org_id, name, metric, device_id, label_key, label_value, condition, threshold_low,
       threshold_high, for_seconds, severity, enabled, created_at
FROM alert_rules WHERE id = %(id)s AND org_id = %(org_id)s

-- name: device_in_org
SELECT 1 FROM devices WHERE device_id = %(device_id)s AND org_id = %(org_id)s

-- name: insert_rule
INSERT INTO alert_rules (org_id, name, metric, device_id, label_key, label_value, condition,
                         threshold_low, threshold_high, for_seconds, severity, enabled)
VALUES (%(org_id)s, %(name)s, %(metric)s, %(device_id)s, %(label_key)s, %(label_value)s,
        %(condition)s, %(threshold_low)s, %(threshold_high)s, %(for_seconds)s, %(severity)s,
        %(enabled)s)
RETURNING id, org_id, name, metric, device_id, label_key, label_value, condition,
          threshold_low, threshold_high, for_seconds, severity, enabled, created_at

-- name: update_rule
UPDATE alert_rules
SET name = %(name)s, metric = %(metric)s, device_id = %(device_id)s, label_key = %(label_key)s,
    label_value = %(label_value)s, condition = %(condition)s, threshold_low = %(threshold_low)s,
    threshold_high = %(threshold_high)s, for_seconds = %(for_seconds)s,
    severity = %(severity)s, enabled = %(enabled)s
WHERE id = %(id)s AND org_id = %(org_id)s
RETURNING id, org_id, name, metric, device_id, label_key, label_value, condition,
          threshold_low, threshold_high, for_seconds, severity, enabled, created_at

-- name: delete_rule
DELETE FROM alert_rules WHERE id = %(id)s AND org_id = %(org_id)s RETURNING id

-- name: get_webhook
SELECT org_id, url, enabled, legacy_signature FROM org_webhooks WHERE org_id = %(org_id)s

-- name: put_webhook
-- Saving always sets a new secret, which ends the legacy signature of a hook from before
-- migration 0009: its receiver must be reconfigured anyway.
INSERT INTO org_webhooks (org_id, url, secret, enabled, legacy_signature)
VALUES (%(org_id)s, %(url)s, %(secret)s, %(enabled)s, false)
ON CONFLICT (org_id) DO UPDATE
SET url = EXCLUDED.url, secret = EXCLUDED.secret, enabled = EXCLUDED.enabled,
    legacy_signature = false
RETURNING org_id, url, enabled, legacy_signature

-- name: delete_webhook
DELETE FROM org_webhooks WHERE org_id = %(org_id)s RETURNING org_id

-- name: list_deliveries
-- Newest first on (created_at, id), a total order: the API pages by keyset with `before_*`.
SELECT id, alert_id, event, status, attempt_count, next_attempt_at, last_error, attempts,
       created_at, delivered_at
FROM webhook_deliveries
WHERE org_id = %(org_id)s
  AND (%(before_time)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_time)s::timestamptz, %(before_id)s::bigint))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
