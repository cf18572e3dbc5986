"""`fieldhub status` on a host that names its roles (FIELDHUB_ROLES): each role probed at
the endpoints the processes really use, with its metrics URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core.config import Role, Settings
from fieldhub.core.procs import free_port
from fieldhub.stack.role_endpoints import endpoints_of
from tests.stack.test_health import WorkerProcess
from tests.support import BridgeProcess, TestStack, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_each_role_is_found_where_its_process_listens() -> None:
    settings = Settings.from_env(
        {
            "FIELDHUB_LOCAL_BROKERS": "2",
            "FIELDHUB_METRICS_HOST": "10.0.0.21",
            "FIELDHUB_WEB_HOST": "0.0.0.0",  # noqa: S104 - what a host may bind
        }
    )
    bridge = endpoints_of(settings, Role("bridge", "broker-2-3"))
    assert bridge.unit == "fieldhub-bridge@broker-2-3.service"
    assert bridge.readyz == "http://10.0.0.21:9120/readyz"  # 9108 + 10 x 1 + 3 - 1
    assert bridge.metrics == "http://10.0.0.21:9120/metrics"
    web = endpoints_of(settings, Role("web", "2"))
    assert web.readyz == "http://127.0.0.1:8001/readyz"
    assert web.metrics == "http://10.0.0.21:9121/metrics"
    worker = endpoints_of(settings, Role("worker"))
    assert (worker.unit, worker.readyz) == (
        "fieldhub-worker.service",
        "http://10.0.0.21:9130/readyz",
    )
    assert endpoints_of(settings, Role("database")).unit == "postgresql.service"
    assert endpoints_of(settings, Role("auth-sync", "broker-1")).readyz is None


@pytest.mark.integration
def test_status_probes_the_roles_of_this_host(database_url: str, broker: MosquittoBroker) -> None:
    worker = WorkerProcess(database_url)
    try:
        with TestStack(database_url, broker) as stack, BridgeProcess(stack, instance=3) as bridge:
            bridge.start().wait_ready()
            home = tempfile.mkdtemp(prefix="fieldhub-test-status-")
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("FIELDHUB_")},
                "FIELDHUB_HOME": home,
                "DATABASE_URL": database_url,
                "FIELDHUB_ROLES": "bridge@broker-1-3,worker,web@1,auth-sync@broker-1",
                # Instance 3 listens on FIELDHUB_BRIDGE_METRICS_PORT + 2.
                "FIELDHUB_BRIDGE_METRICS_PORT": str(bridge.metrics_port - 2),
                "FIELDHUB_WORKER_METRICS_PORT": str(worker.port),
                "FIELDHUB_WEB_PORT": str(free_port()),  # nothing listens there
            }

            def status() -> tuple[int, dict[str, dict[str, object]]]:
                result = subprocess.run(
                    [sys.executable, "-m", "fieldhub", "status", "--json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=ROOT,
                )
                assert result.returncode == 0, result.stderr
                return result.returncode, {r["role"]: r for r in json.loads(result.stdout)["roles"]}

            roles = wait_for(
                lambda: (r := status()[1])["worker"]["state"] == "ready" and r,
                timeout=30,
                what="the worker to be ready",
            )
            assert roles["bridge@broker-1-3"]["state"] == "ready"
            assert roles["bridge@broker-1-3"]["metrics_url"] == (
                f"http://127.0.0.1:{bridge.metrics_port}/metrics"
            )
            assert roles["worker"]["metrics_url"] == f"http://127.0.0.1:{worker.port}/metrics"
            assert roles["web@1"]["state"] == "down"
            assert roles["auth-sync@broker-1"]["unit"] == "fieldhub-auth-sync@broker-1.service"

            text = subprocess.run(
                [sys.executable, "-m", "fieldhub", "status"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
            )
            assert text.returncode == 1  # a role is down
            assert "roles of this host (FIELDHUB_ROLES):" in text.stdout
            assert f"http://127.0.0.1:{bridge.metrics_port}/metrics" in text.stdout
    finally:
        worker.close()
