"""Debian's Prometheus for the deploy tests: one started on a free port with a given
configuration, and its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fieldhub.core.procs import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "fieldhub.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "fieldhub-alerts.yml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

NEEDS_PROMETHEUS = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus package is not installed (scripts/setup installs it)",
)


@contextmanager
def running_prometheus(config: dict[str, Any]) -> Iterator[str]:
    """Prometheus with this configuration (paths in it absolute), until the block ends; its
    URL."""
    assert PROMETHEUS is not None
    folder = Path(tempfile.mkdtemp(prefix="fieldhub-test-prometheus-"))
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/-/ready"), timeout=30, what="Prometheus to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except OSError:
        return False


def api(prometheus: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{prometheus}/api/v1/{path}?{query}", timeout=10) as response:  # noqa: S310
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]
