"""The fieldhub web app: pages for people, a JSON API for programs, admin, and live updates.

`create_app()` builds the app from `Settings.from_env()`; tests pass `test_config` with the
database URL of their own database. Each module hooks itself in with `init_app(app)`. Builds
on fieldhub.core and the analysis service; templates/ and static/ are package data beside it."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

import orjson
from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider

from fieldhub.core.config import Settings

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
# Data files for bulk import (a few days of a device's backlog, an export from another
# system) are far larger than any form; only the import endpoints accept this much.
IMPORT_MAX_BYTES = 100 * 1024 * 1024
IMPORT_ENDPOINTS = frozenset({"pages.imports", "api.create_import"})


class JSONProvider(DefaultJSONProvider):
    """orjson: ISO 8601 times (Flask's default is RFC 822), UUIDs as strings, and several times
    faster than the standard library on a month of chart points."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)
        return DefaultJSONProvider.default(o)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    # Imported here, not at the top: gunicorn's master imports this package (for its config
    # module, fieldhub.web.gunicorn_conf) and must not import psycopg before it forks the
    # gevent workers (tests/stack/test_health.py says why).
    from fieldhub.core import endpoints

    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        # Flask's own signed cookie carries only flash messages; sessions are server-side.
        SESSION_COOKIE_NAME="fh_flash",
        SESSION_COOKIE_SAMESITE="Lax",
        # Cookies are Secure whenever the request came over TLS (directly or via a proxy
        # gunicorn trusts); this forces it even on plain HTTP, for TLS-terminating proxies
        # that are not trusted for X-Forwarded-Proto.
        COOKIE_SECURE_ALWAYS=False,
        LOGIN_WINDOW_S=900,
        LOGIN_MAX_PER_EMAIL=5,
        LOGIN_MAX_PER_IP=30,
        PAGE_SIZE=50,
        LIVE_KEEPALIVE_S=15.0,
        IMPORT_MAX_BYTES=IMPORT_MAX_BYTES,
        # Streaming exports (fieldhub.web.exports): at once per user (in the database, so
        # across workers and hosts); connections of their own per process, so that exports
        # never take the pages' connections; how long an export waits for one.
        EXPORTS_PER_USER=2,
        EXPORT_POOL_SIZE=4,
        EXPORT_WAIT_S=2.0,
        # What the device page says about how long refused messages are kept: the worker's
        # FIELDHUB_RETENTION_DEAD_LETTERS_DAYS, which deletes them.
        DEAD_LETTERS_RETENTION_DAYS=14,
        # FIELDHUB_WEBHOOK_ALLOWED_NETWORKS: what a webhook URL may reach besides the public
        # internet; none unless configured.
        WEBHOOK_ALLOWED_NETWORKS=(),
        # Peers whose X-Forwarded-For names the client (fieldhub.web.proxies).
        TRUSTED_PROXIES=(),
        # HTTP ingest: requests per second per device, across workers (fieldhub.web.ingest).
        INGEST_RATE_PER_S=10,
    )
    if test_config is None:
        settings = Settings.from_env()
        app.config.update(
            DATABASE_URL=endpoints.database_url(settings),
            READ_DATABASE_URL=endpoints.read_database_url(settings),
            # Sessions live in the database; the key only signs flash messages. Development
            # without a key uses one kept under $FIELDHUB_HOME, the same for every worker.
            SECRET_KEY=settings.secret_key or endpoints.service_secret(settings, "web-secret-key"),
            COOKIE_SECURE_ALWAYS=settings.production,
            # Each device is homed on one broker; its credentials name that broker's URL.
            DEVICE_MQTT_URLS=endpoints.device_mqtt_url_map(settings),
            SESSION_COOKIE_SECURE=settings.production,
            WEBHOOK_ALLOWED_NETWORKS=settings.webhook_allowed_networks,
            TRUSTED_PROXIES=settings.trusted_proxies,
            DEAD_LETTERS_RETENTION_DAYS=settings.retention_dead_letters_days,
            EXPORTS_PER_USER=settings.exports_per_user,
            INGEST_RATE_PER_S=settings.ingest_rate_per_s,
            # Where the device CA is, if this host has it (admin: "Issue certificate").
            DEVICE_CA_DIR=settings.tls_dir,
        )
    else:
        app.config.update(test_config)
        app.config.setdefault("READ_DATABASE_URL", app.config["DATABASE_URL"])
        if not app.config.get("SECRET_KEY"):
            app.config["SECRET_KEY"] = secrets.token_hex(32)

    from fieldhub.web import (
        account,
        admin,
        api,
        auth,
        db,
        errors,
        health,
        ingest,
        live,
        metrics,
        pages,
        template_helpers,
    )
    from fieldhub.web.proxies import TrustedProxies

    # Outermost, so every part of the app and gunicorn's access log see the client's address.
    app.wsgi_app = TrustedProxies(  # type: ignore[method-assign]
        app.wsgi_app, app.config["TRUSTED_PROXIES"]
    )
    db.init_app(app)
    errors.init_app(app)
    # First of the before-request hooks: the latency clock starts before anything else runs,
    # and a process that is not ready refuses before any hook touches the database.
    metrics.init_app(app)
    health.init_app(app)
    # Before auth's CSRF check, which is the first to read a posted form.
    app.before_request(_upload_limit)
    auth.init_app(app)
    template_helpers.init_app(app)
    live.init_app(app)
    pages.init_app(app)
    account.init_app(app)
    api.init_app(app)
    ingest.init_app(app)
    admin.init_app(app)
    return app


def shutdown(app: Flask) -> None:
    """Stop what the app started in this process: the live hub, the pools, the readiness
    probe's connection."""
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()
    app.extensions["fieldhub.readiness"].close()


def _upload_limit() -> None:
    if request.endpoint in IMPORT_ENDPOINTS:
        request.max_content_length = int(current_app.config["IMPORT_MAX_BYTES"])
