"""Health and metrics of the real processes: `fieldhub web` (gunicorn), `fieldhub bridge` and
`fieldhub worker` against a PostgreSQL of this test's own, which the test freezes (SIGSTOP:
a database that stops answering, the hard case) and then stops outright.

Each process's /readyz must turn 503 within 10 s of its database going away while /healthz
stays 200, and turn 200 again once the database is back. The web app's metrics, served by
gunicorn's master on the metrics port, must add up its workers (multiprocess mode)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core.config import Settings
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import free_port
from fieldhub.stack import cluster as cluster_mod
from fieldhub.stack.postgres import PostgresCluster
from tests.support import BridgeProcess, TestStack, http_status, scrape, wait_for
from tests.web.helpers import PASSWORD, WebServer, csrf_from, seed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN_S = 10.0


@pytest.fixture
def own_database() -> Iterator[PostgresCluster]:
    base = Path(tempfile.mkdtemp(prefix="fieldhub-test-health-"))
    base.chmod(0o755)
    cluster = PostgresCluster(base / "cluster", free_port(), base / "password", fast_unsafe=True)
    cluster.init()
    cluster.start()
    try:
        cluster.create_database("fieldhub")
        apply_migrations(cluster.url("fieldhub"))
        yield cluster
    finally:
        _signal_all(cluster, signal.SIGCONT)
        cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def _postgres_pids(cluster: PostgresCluster) -> list[int]:
    """The postmaster and its children (backends, background workers)."""
    postmaster = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def _signal_all(cluster: PostgresCluster, sig: int) -> None:
    if not (cluster.pgdata / "postmaster.pid").exists():
        return
    for pid in _postgres_pids(cluster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class WorkerProcess:
    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="fieldhub-test-worker-"))
        env = {**os.environ, "DATABASE_URL": database_url, "FIELDHUB_HOME": str(self.home)}
        self.log = self.home / "worker.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fieldhub.cli", "worker", "--metrics-port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def _all(probes: dict[str, str], expected: int) -> bool:
    return all(http_status(url) == expected for url in probes.values())


def _turns(probes: dict[str, str], expected: int, within: float) -> dict[str, float]:
    """How long each probe took to answer `expected`, each polled by a thread of its own (a
    probe of a process whose database hangs takes up to 3 s to answer); fails after
    `within` seconds."""
    started = time.monotonic()
    taken: dict[str, float] = {}

    def poll(name: str, url: str) -> None:
        while time.monotonic() - started < within:
            if http_status(url) == expected:
                taken[name] = time.monotonic() - started
                return
            time.sleep(0.1)

    threads = [threading.Thread(target=poll, args=item) for item in probes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pending = sorted(set(probes) - set(taken))
    assert not pending, f"{pending} did not answer {expected} within {within} s"
    return taken


def test_readiness_follows_the_database_and_liveness_does_not(
    own_database: PostgresCluster, broker: MosquittoBroker
) -> None:
    url = own_database.url("fieldhub")
    world = seed(url)
    worker = WorkerProcess(url)
    with (
        TestStack(url, broker) as stack,
        BridgeProcess(stack, instance=free_port()) as bridge,
        WebServer(url) as web,
    ):
        try:
            bridge.start().wait_ready()
            ready = {
                "web": f"{web.url}/readyz",
                "bridge": f"http://127.0.0.1:{bridge.metrics_port}/readyz",
                "worker": f"http://127.0.0.1:{worker.port}/readyz",
            }
            alive = {name: probe.replace("/readyz", "/healthz") for name, probe in ready.items()}
            wait_for(lambda: _all(ready, 200), timeout=30, what="every process to be ready")
            _web_metrics_add_up_the_workers(web, world.emails["a_member"], world.devices["a"])

            # Frozen: connections stay open but nothing answers.
            _signal_all(own_database, signal.SIGSTOP)
            try:
                frozen = _turns(ready, 503, READY_WITHIN_S)
                assert _all(alive, 200)
            finally:
                # Before anything else: a process cannot stop cleanly while its database hangs.
                _signal_all(own_database, signal.SIGCONT)
            wait_for(lambda: _all(ready, 200), timeout=30, what="ready after the thaw")

            # Stopped: connections refused.
            own_database.stop(mode="immediate")
            stopped = _turns(ready, 503, READY_WITHIN_S)
            assert _all(alive, 200)
            own_database.start()
            wait_for(lambda: _all(ready, 200), timeout=60, what="ready after the restart")
            print(f"\nnot ready after: frozen {frozen}, stopped {stopped}")
        finally:
            worker.close()


def _web_metrics_add_up_the_workers(web: WebServer, email: str, device_id: str) -> None:
    metrics_url = f"http://127.0.0.1:{web.env['FIELDHUB_WEB_METRICS_PORT']}/metrics"
    session = requests.Session()
    page = session.get(web.url + "/login", timeout=10)
    session.post(
        web.url + "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
        timeout=10,
    )
    for _ in range(3):
        assert session.get(f"{web.url}/devices/{device_id}", timeout=10).status_code == 200
    stream = session.get(f"{web.url}/devices/{device_id}/live", stream=True, timeout=(10, 60))
    opened = threading.Event()

    def read() -> None:
        with contextlib.suppress(requests.RequestException, AttributeError):
            for _line in stream.iter_lines():
                opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10)
    live = 'fieldhub_web_live_streams{stream="device"}'
    wait_for(lambda: scrape(metrics_url).get(live) == 1.0, what="the open stream counted")
    values = scrape(metrics_url)
    route = (
        "fieldhub_web_request_duration_seconds_count"
        '{method="GET",route="/devices/<device_id>",status="200"}'
    )
    assert values[route] == 3.0
    assert values['fieldhub_web_pool_wait_seconds_count{pool="read"}'] >= 3.0
    # Closing is counted when the server notices the client is gone, at a keep-alive write
    # 15-30 s later; tests/web/test_health.py checks that a closed stream is uncounted.
    stream.close()


def test_gunicorns_master_does_not_import_psycopg_before_the_workers_patch() -> None:
    """psycopg picks its wait function once, at import: imported in the master, it would
    block every gevent worker forked from it on each database round trip."""
    code = (
        "import sys, fieldhub.web.gunicorn_conf\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'gevent')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (scripts/setup installs it for cluster mode)",
)
def test_nginx_of_the_cluster_skips_a_web_instance_that_is_not_ready(
    own_database: PostgresCluster, database_url: str
) -> None:
    """nginx OSS has no active health checks: a not-ready instance answers 503, and the
    cluster's nginx configuration (proxy_next_upstream http_503) gives the request to the
    other instance, so people see no error."""
    home = Path(tempfile.mkdtemp(prefix="fieldhub-test-nginx-"))
    home.chmod(0o755)
    sick_url = own_database.url("fieldhub")
    seed(sick_url)
    seed(database_url)
    with WebServer(sick_url) as sick, WebServer(database_url) as healthy:
        settings = Settings.from_env(
            {"FIELDHUB_HOME": str(home), "FIELDHUB_WEB_PORT": str(free_port())}
        )
        conf = cluster_mod.render_nginx(settings, [sick.port, healthy.port])
        spec = cluster_mod.nginx_spec(settings, conf, lambda: True)
        nginx = subprocess.Popen(
            list(spec.argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        front = f"http://127.0.0.1:{settings.ports.web}"
        try:
            wait_for(lambda: http_status(f"{front}/login") == 200, what="nginx to answer")
            own_database.stop(mode="immediate")
            wait_for(
                lambda: http_status(f"{sick.url}/readyz") == 503, what="one instance not ready"
            )
            answers = [http_status(f"{front}/login") for _ in range(20)]
            assert answers == [200] * 20
            # The sick instance was asked and refused: nginx moved on, it did not just miss it.
            assert re.search(r'"GET /login HTTP/1\.[01]" 503', sick.log())
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
            shutil.rmtree(home, ignore_errors=True)
