"""Test helpers of the web app: a seeded two-tenant world, logins, and a real gunicorn."""

from __future__ import annotations

import dataclasses
import http.client
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from flask.testing import FlaskClient
from playwright.sync_api import Page, expect
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.analysis import service as analysis_service
from fieldhub.bench.harness import Child, http_status
from fieldhub.core import command_requests, registry, users
from fieldhub.core.procs import free_port

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


@dataclasses.dataclass
class World:
    """Two organisations with one of everything each, plus an operator."""

    database_url: str
    emails: dict[str, str]  # role key -> email, e.g. "a_admin"
    devices: dict[str, str]  # "a" / "b" -> device id
    commands: dict[str, str]  # "a" / "b" -> command id
    alerts: dict[str, int]
    user_ids: dict[str, int]
    rules: dict[str, int]
    imports: dict[str, str]
    tokens: dict[str, int]  # "a" / "b" -> the id of an API token of that organisation's admin


def seed(database_url: str) -> World:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        emails: dict[str, str] = {}
        user_ids: dict[str, int] = {}
        devices: dict[str, str] = {}
        commands: dict[str, str] = {}
        alerts: dict[str, int] = {}
        rules: dict[str, int] = {}
        imports: dict[str, str] = {}
        tokens: dict[str, int] = {}
        for org in ("a", "b"):
            org_row = registry.create_org(conn, f"org-{org}", f"Organisation {org.upper()}")
            for role in ("admin", "member", "viewer"):
                email = f"{role}@{org}.example"
                user = users.create_user(
                    conn, email, org=f"org-{org}", role=role, password=PASSWORD
                )
                emails[f"{org}_{role}"] = email
                user_ids[f"{org}_{role}"] = user["id"]
            tokens[org] = users.create_api_token(conn, f"admin@{org}.example", name="seed")[1]["id"]
            device_id = f"dev-{org}1"
            registry.create_device(
                conn,
                device_id,
                org=f"org-{org}",
                display_name=f"Device {org}",
                labels={"site": org},
            )
            devices[org] = device_id
            # Half a minute off whole minutes, so a test's own reading on a whole minute is
            # never within a few seconds of a seeded one (the chart's hover would not tell
            # them apart).
            now = datetime.now(UTC).replace(second=30, microsecond=0)
            for i in range(30):
                conn.execute(
                    "INSERT INTO readings (time, device_key, metric, value)"
                    " SELECT %s, device_key, %s, %s FROM devices WHERE device_id = %s",
                    (now - timedelta(minutes=30 - i), "temperature", 20.0 + i, device_id),
                )
            conn.execute(
                "INSERT INTO latest_values (device_key, metric, time, value)"
                " SELECT device_key, %s, %s, %s FROM devices WHERE device_id = %s",
                ("temperature", now - timedelta(minutes=1), Jsonb(49.0), device_id),
            )
            conn.execute(
                "INSERT INTO device_state (device_key, online, last_seen)"
                " SELECT device_key, true, %s FROM devices WHERE device_id = %s",
                (now, device_id),
            )
            command = command_requests.send_command(
                conn, device_id=device_id, name="reboot", params={}, ttl_s=600
            )
            commands[org] = command["id"]
            rule = conn.execute(
                "INSERT INTO alert_rules (org_id, name, metric, device_id, condition,"
                " threshold_high,"
                " severity, enabled) VALUES (%s, 'too hot', 'temperature', %s, 'above', 40,"
                " 'warning', true) RETURNING id",
                (org_row["id"], device_id),
            ).fetchone()
            assert rule is not None
            alert = conn.execute(
                "INSERT INTO alerts (rule_id, org_id, device_id, state, value, started_at, message)"
                " VALUES (%s, %s, %s, 'active', 49, now(), 'temperature above 40') RETURNING id",
                (rule["id"], org_row["id"], device_id),
            ).fetchone()
            assert alert is not None
            alerts[org] = alert["id"]
            rules[org] = rule["id"]
            # Queued and never run here (no worker): an object with a URL of its own.
            queued = analysis_service.create_import(
                conn,
                org_id=org_row["id"],
                content=b"time,metric,value\n",
                filename="seed.csv",
                device_id=device_id,
            )
            imports[org] = str(queued["id"])
        registry.create_org(conn, "ops", "Operations")
        operator = users.create_user(
            conn, "op@ops.example", org="ops", role="operator", password=PASSWORD
        )
        emails["operator"] = "op@ops.example"
        user_ids["operator"] = operator["id"]
    return World(database_url, emails, devices, commands, alerts, user_ids, rules, imports, tokens)


def api_token(database_url: str, email: str) -> str:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        token, _ = users.create_api_token(conn, email)
    return token


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The RFC 9457 problem document of an error response, checked to be one of type `slug`."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["type"] == f"/api/v1/problems/{slug}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_META.search(html) or CSRF_FIELD.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return csrf_from(client.get("/devices").get_data(as_text=True))


class WebServer:
    """`fieldhub web` (gunicorn, gevent workers) against a test database, as a
    fieldhub.bench.harness.Child; ready when its login page answers."""

    def __init__(
        self, database_url: str, *, workers: int = 1, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="fieldhub-test-web-"))
        self.child = Child(
            "web",
            ["--workers", str(workers), "--bind", f"127.0.0.1:{self.port}"],
            {
                "DATABASE_URL": database_url,
                "FIELDHUB_HOME": str(self.home),
                "FIELDHUB_SECRET_KEY": "x" * 40,
                "FIELDHUB_LOG_LEVEL": "WARNING",
                # Test webhook receivers run on loopback.
                "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
                "FIELDHUB_WEB_METRICS_PORT": str(free_port()),
                **(extra_env or {}),
            },
            self.home / "web.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return self.child.env

    def __enter__(self) -> WebServer:
        self.child.start()
        self.child.wait_ready(
            lambda: http_status(self.url + "/login", timeout=2) == 200,
            timeout=30,
            what="gunicorn to answer",
        )
        return self

    def log(self) -> str:
        return self.child.log()

    def __exit__(self, *exc: Any) -> None:
        self.child.stop(timeout=15)


class SourceClient:
    """One browser at one source address (any 127.x.y.z reaches loopback servers), to be a
    client of its own: cookies, the login form and its CSRF token."""

    def __init__(self, port: int, source: str) -> None:
        self.port = port
        self.source = source
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, source_address=(self.source, 0), timeout=20
        )
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body, sent)
            response = conn.getresponse()
            text = response.read().decode()
            for cookie in response.headers.get_all("Set-Cookie") or []:
                name, _, value = cookie.split(";", 1)[0].partition("=")
                self.cookies[name] = value
            return response.status, text
        finally:
            conn.close()

    def login(self, email: str, password: str, **headers: str) -> int:
        _, page = self.request("GET", "/login", None, **headers)
        form = {"email": email, "password": password, "csrf_token": csrf_from(page)}
        return self.request("POST", "/login", form, **headers)[0]


# -- browser tests -----------------------------------------------------------------------------
def shot(page: Page, name: str) -> None:
    """A full-page screenshot in test-artifacts/, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Devices")
