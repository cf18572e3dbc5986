"""The analysis worker: scheduled jobs (rollups, retention, offline detection, alerts, webhook
delivery, command expiry, file imports) that run safely on several worker instances at once.

See docs/analysis.md. The web app calls `analysis.service`.
"""
