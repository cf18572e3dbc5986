"""The Grafana dashboard works: every panel's query returns data from a real stack.

`fieldhub up --demo` runs on free ports (simulated devices publish, the worker runs its jobs);
the test adds what the demo does not do by itself (a command and its answer, a dead letter,
a logged-in user opening pages and a live stream) and runs Debian's Prometheus, scraping every
process at the metrics URL `fieldhub status --json` gives for it, with the job names of
deploy/prometheus/fieldhub.yml (which promtool also checks). Then each target of each panel
of deploy/grafana/fieldhub.json is evaluated through Prometheus's HTTP API: every metric it
names must exist, and the query must return at least one series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from tests.deploy.prometheus import (
    NEEDS_PROMETHEUS,
    PROMTOOL,
    ROOT,
    SCRAPE_CONFIG,
    api,
    running_prometheus,
)
from tests.stack.test_stack import _environment, _fieldhub, _status
from tests.support import wait_for
from tests.web.helpers import csrf_from

DASHBOARD = ROOT / "deploy" / "grafana" / "fieldhub.json"
METRIC = re.compile(r"\b(fieldhub_[a-z0-9_]+|up)\b")
# A process's job in deploy/prometheus/fieldhub.yml, by the stack's process name.
JOBS = {"bridge": "fieldhub-bridge", "web": "fieldhub-web", "worker": "fieldhub-worker"}

pytestmark = [pytest.mark.integration, NEEDS_PROMETHEUS]


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_the_scrape_config_is_valid_and_names_the_jobs() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(SCRAPE_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = re.findall(r"job_name: (\S+)", SCRAPE_CONFIG.read_text())
    # The database hosts' Patroni besides fieldhub's own processes (tests/deploy/test_alerts.py).
    assert sorted(jobs) == sorted([*JOBS.values(), "patroni"])


@pytest.fixture
def demo_stack() -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    home = Path(tempfile.mkdtemp(prefix="fieldhub-test-dashboard-"))
    home.chmod(0o755)
    env = _environment(home)
    try:
        started = _fieldhub(env, "up", "--detach", "--demo")
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, _status(env)
    finally:
        _fieldhub(env, "down", timeout=180)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def prometheus(demo_stack: tuple[dict[str, str], dict[str, Any]]) -> Iterator[str]:
    """Prometheus scraping every process of the stack once a second; yields its URL."""
    _env, status = demo_stack
    targets: dict[str, list[str]] = {}
    for name, process in status["processes"].items():
        if process.get("metrics_url"):
            job = JOBS[name.split("-")[0]]
            targets.setdefault(job, []).append(urllib.parse.urlsplit(process["metrics_url"]).netloc)
    assert set(targets) == set(JOBS.values()), status["processes"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }
    with running_prometheus(config) as url:
        yield url


def _traffic(env: dict[str, str], status: dict[str, Any], stop: threading.Event) -> None:
    """What the demo does not do by itself: a command and its answer, a dead letter, a
    person using the web app (pages, the API, a live stream)."""
    sent = _fieldhub(env, "command", "send", "demo-01", "ping", "--ttl", "60")
    assert sent.returncode == 0, sent.stderr
    created = _fieldhub(env, "device", "create", "dashboard-probe", "--org", "demo", "--json")
    assert created.returncode == 0, created.stderr
    credentials = json.loads(created.stdout)
    device = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="dashboard-probe", protocol=mqtt.MQTTv5
    )
    device.username_pw_set("dashboard-probe", credentials["password"])
    port = int(env["FIELDHUB_MQTT_PORT"])

    def publish_garbage() -> bool:
        try:
            device.connect("127.0.0.1", port)
        except OSError:
            return False
        device.loop_start()
        try:
            info = device.publish("devices/dashboard-probe/telemetry", b"not json", qos=1)
            info.wait_for_publish(timeout=5)
            return info.is_published()
        except RuntimeError:
            # Refused at CONNACK: auth-sync has not rendered the new device yet.
            return False
        finally:
            device.disconnect()
            device.loop_stop()

    wait_for(publish_garbage, timeout=30, interval=0.5, what="the probe device's garbage sent")

    web = status["web_url"].rstrip("/")
    login = status["demo_login"]
    session = requests.Session()
    page = session.get(f"{web}/login", timeout=10)
    session.post(
        f"{web}/login",
        data={
            "email": login["email"],
            "password": Path(login["password_file"]).read_text().strip(),
            "csrf_token": csrf_from(page.text),
        },
        timeout=10,
    )
    stream = session.get(f"{web}/devices/demo-01/live", stream=True, timeout=(10, 60))
    try:
        while not stop.is_set():
            for path in ("/devices", "/devices/demo-01", "/alerts", "/no-such-page"):
                session.get(f"{web}{path}", timeout=10)
            stop.wait(0.5)
    finally:
        stream.close()


def test_every_panel_of_the_dashboard_returns_data(
    demo_stack: tuple[dict[str, str], dict[str, Any]], prometheus: str
) -> None:
    env, status = demo_stack
    queries = panel_queries()
    assert len(queries) >= 20
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(env, status, stop), daemon=True)
    traffic.start()
    try:
        wait_for(
            lambda: all(t["health"] == "up" for t in api(prometheus, "targets")["activeTargets"]),
            timeout=60,
            what="Prometheus to scrape every process",
        )
        names = set(METRIC.findall(" ".join(expr for _, expr in queries)))

        def missing_names() -> set[str]:
            return names - set(api(prometheus, "label/__name__/values"))

        def empty_panels() -> list[str]:
            return [
                f"{title}: {expr}"
                for title, expr in queries
                if not api(prometheus, "query", query=expr, time=str(time.time()))["result"]
            ]

        # Rates need two scrapes after the first event; the worker's slowest job (rollups)
        # and the command's answer take a few seconds more.
        deadline = time.monotonic() + 90
        while (missing := missing_names()) and time.monotonic() < deadline:
            time.sleep(1)
        assert missing == set(), f"metrics the dashboard queries but nothing exports: {missing}"
        while (empty := empty_panels()) and time.monotonic() < deadline:
            time.sleep(2)
        assert empty == [], "panels without data:\n" + "\n".join(empty)
    finally:
        stop.set()
        traffic.join(timeout=30)
