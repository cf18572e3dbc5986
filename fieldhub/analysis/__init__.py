"""The analysis worker: scheduled jobs (rollups, retention, offline detection, alerts, webhook
delivery, command expiry, file imports) that run safely on several worker instances at once.

Builds on fieldhub.core only. See docs/analysis.md. The web app calls
`fieldhub.analysis.service`."""
