"""The WSGI entry point gunicorn loads in each worker: `fieldhub.web.wsgi:app`.

Imported only inside workers, after gevent has monkey-patched the standard library, so
psycopg picks its cooperative wait function (it chooses once, at import time)."""

from __future__ import annotations

import logging

import psycopg.waiting

from fieldhub.web import create_app

app = create_app()
logging.getLogger(__name__).info(
    "psycopg waits with %s", getattr(psycopg.waiting.wait, "__name__", "?")
)
