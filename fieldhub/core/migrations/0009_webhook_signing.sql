-- Webhooks are signed by the Standard Webhooks scheme (docs/analysis.md, "Signing"): the
-- signature covers a message id and the attempt's timestamp with the body, so a captured
-- delivery cannot be replayed. And deliveries take turns across organisations.

-- The message id (`webhook-id`): the same for every attempt of one delivery, so receivers
-- de-duplicate on it; random, so it tells one organisation nothing about how many deliveries
-- other organisations get (the bigint id would). The volatile default rewrites the table
-- once; it holds at most 30 days of finished deliveries (retention) and the pending ones.
ALTER TABLE webhook_deliveries ADD COLUMN message_id uuid NOT NULL DEFAULT gen_random_uuid();

-- Hooks configured before this migration keep working: their receivers know the old secret,
-- a random text whose UTF-8 bytes were the HMAC key. The secret is stored in the Standard
-- Webhooks form `whsec_<base64 of the key>` (the same key bytes), and `legacy_signature`
-- keeps sending the old body-only header X-Fieldhub-Signature beside the new ones until an
-- admin saves the webhook again, which generates a new secret and ends the legacy header.
ALTER TABLE org_webhooks ADD COLUMN legacy_signature boolean NOT NULL DEFAULT false;
UPDATE org_webhooks
SET secret = 'whsec_' || replace(encode(convert_to(secret, 'UTF8'), 'base64'), E'\n', ''),
    legacy_signature = true;
ALTER TABLE org_webhooks
    ADD CONSTRAINT org_webhooks_secret_form CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$');

-- When the organisation's last delivery attempt ended: the round-robin of the `webhooks` job
-- serves the organisation that has waited longest since its last turn, across passes and
-- workers (an organisation whose receiver just took its whole timeout goes to the back).
ALTER TABLE org_webhooks ADD COLUMN last_attempt_at timestamptz;
