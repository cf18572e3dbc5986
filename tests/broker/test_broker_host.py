"""A broker host set up as docs/deploy.md says: `fieldhub tls ensure --dir --hostname`,
`fieldhub broker-config`, Mosquitto started with the rendered file, and `fieldhub auth-sync`
with the environment its systemd unit gives it. A device registered afterwards logs in over
TLS, checking the certificate against the CA; the services listener is on the address given."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.procs import free_port, port_open
from tests.stack.test_stack import _fieldhub
from tests.support import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def host_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fieldhub-test-broker-host-"))
    path.chmod(0o755)  # the mosquitto user passes through
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _tls_login(port: int, username: str, password: str, ca: Path) -> bool:
    """MQTT over TLS to 127.0.0.1, the certificate checked against the CA (the name is
    checked by _certificate_names_the_host: without DNS, the test connects by address)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.tls_set_context(context)
    result: list[object] = []
    client.on_connect = lambda c, u, f, reason, p: result.append(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: result, what="CONNACK over TLS")
    finally:
        client.disconnect()
        client.loop_stop()
    return not result[0].is_failure  # type: ignore[attr-defined]


def _certificate_names_the_host(port: int, hostname: str, ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_broker_host_from_its_documented_steps(database_url: str, host_dir: Path) -> None:
    tls_dir, broker_dir = host_dir / "tls", host_dir / "fieldhub-broker"
    ports = {
        "FIELDHUB_MQTT_PORT": str(free_port()),
        "FIELDHUB_MQTTS_PORT": str(free_port()),
        "FIELDHUB_MQTT_SERVICE_PORT": str(free_port()),
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FIELDHUB_")},
        **ports,
        "FIELDHUB_HOME": str(host_dir / "home"),
        "DATABASE_URL": database_url,
        "FIELDHUB_MOSQUITTO_DIR": str(broker_dir),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(broker_dir / "mosquitto.pid"),
    }
    made = _fieldhub(
        env, "tls", "ensure", "--dir", str(tls_dir), "--hostname", "mqtt1.test.internal"
    )
    assert made.returncode == 0, made.stderr
    refused = _fieldhub(
        env, "broker-config", "--services-bind", "127.0.0.1", "--tls-dir", str(host_dir)
    )
    assert refused.returncode == 2
    assert "lacks ca.crt, server.crt, server.key" in refused.stderr
    rendered = _fieldhub(
        env,
        "broker-config",
        "--services-bind",
        "127.0.0.1",
        "--tls-bind",
        "127.0.0.1",
        "--tls-dir",
        str(tls_dir),
    )
    assert rendered.returncode == 0, rendered.stderr
    conf = (broker_dir / "mosquitto.conf").read_text()
    assert f"listener {ports['FIELDHUB_MQTT_SERVICE_PORT']} 127.0.0.1" in conf
    assert f"pid_file {broker_dir / 'mosquitto.pid'}" in conf

    mosquitto = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(broker_dir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sync = None
    try:
        wait_for(lambda: port_open(int(ports["FIELDHUB_MQTTS_PORT"])), what="Mosquitto's TLS port")
        sync = subprocess.Popen(
            [sys.executable, "-m", "fieldhub", "auth-sync", "--broker", "broker-1", "--sweep", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            registry.create_org(conn, "hosted")
            creds = registry.create_device(conn, "field-unit-1", org="hosted")
        port = int(ports["FIELDHUB_MQTTS_PORT"])
        _certificate_names_the_host(port, "mqtt1.test.internal", tls_dir / "ca.crt")
        with pytest.raises(ssl.SSLCertVerificationError):
            _certificate_names_the_host(port, "mqtt2.test.internal", tls_dir / "ca.crt")
        assert wait_for(
            lambda: _tls_login(port, "field-unit-1", creds.password, tls_dir / "ca.crt"),
            timeout=30,
            interval=0.5,
            what="auth-sync to let the device log in over TLS",
        )
        assert not _tls_login(port, "field-unit-1", "wrong", tls_dir / "ca.crt")
    finally:
        if sync is not None:
            sync.terminate()
            sync.wait(timeout=30)
        mosquitto.terminate()
        mosquitto.wait(timeout=30)
