"""`fieldhub up/status/down` end to end, plus the supervisor's pure parts.

The end-to-end test runs the real command line in a scratch FIELDHUB_HOME on free ports: the
stack comes up detached with demo data, a process killed with SIGKILL comes back (and the
supervisor says so in its log), `down` leaves no process and no port behind, and a second `up`
finds the data of the first."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.core import endpoints, registry
from fieldhub.core.brokers import home_broker
from fieldhub.core.command_requests import get_command, send_command
from fieldhub.core.config import Settings
from fieldhub.core.endpoints import mask_url
from fieldhub.core.procs import free_port, port_open
from fieldhub.sim.simulate import Stats, Target, provision, run_devices, wait_until_accepted
from fieldhub.stack.status import format_status, stack_status
from fieldhub.stack.supervisor import (
    Backoff,
    ProcessSpec,
    Supervisor,
    process_start_time,
    read_state,
    same_process_alive,
)
from tests.support import DeviceClient, wait_for
from tests.web.helpers import SourceClient

PORT_VARIABLES = (
    "FIELDHUB_PG_PORT",
    "FIELDHUB_MQTT_PORT",
    "FIELDHUB_MQTTS_PORT",
    "FIELDHUB_MQTTS_CERT_PORT",
    "FIELDHUB_MQTT_SERVICE_PORT",
    "FIELDHUB_WEB_PORT",
    "FIELDHUB_BRIDGE_METRICS_PORT",
    "FIELDHUB_WEB_METRICS_PORT",
    "FIELDHUB_WORKER_METRICS_PORT",
)


# -- unit --------------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_mask_url_hides_only_the_password() -> None:
    assert (
        mask_url("postgresql://fieldhub:s3cr%40t@127.0.0.1:15432/fieldhub")
        == "postgresql://fieldhub:***@127.0.0.1:15432/fieldhub"
    )
    assert mask_url("mqtt://127.0.0.1:1883") == "mqtt://127.0.0.1:1883"


def test_supervisor_restarts_a_dead_child_and_stops_all(tmp_path: Path) -> None:
    supervisor = Supervisor(
        log_dir=tmp_path / "log",
        state_file=tmp_path / "run" / "stack.json",
        backoff=Backoff(initial=0.05, maximum=0.2),
        poll_interval=0.05,
    )
    sleeper = ProcessSpec(name="sleeper", argv=("sleep", "600"), stop_timeout=5)
    supervisor.start(sleeper)
    try:
        first = dict(supervisor.children())["sleeper"]
        assert first is not None
        os.kill(first, signal.SIGKILL)
        second = wait_for(
            lambda: (pid := dict(supervisor.children())["sleeper"]) != first and pid,
            what="a new sleeper pid",
        )
        state = wait_for(
            lambda: (
                (s := read_state(supervisor.state_file))
                and s["processes"]["sleeper"]["pid"] == second
                and s
            ),
            what="the state file to show the new pid",
        )
        assert state["processes"]["sleeper"]["restarts"] == 1
        assert state["processes"]["sleeper"]["last_exit"] == -signal.SIGKILL
    finally:
        supervisor.stop_all()
    assert process_start_time(second) is None


# -- end to end --------------------------------------------------------------------------------
# Cluster mode derives ports from these (replica = PG + 1, web instances = WEB + 1 and + 2
# with metrics on WEB_METRICS + 0 and + 1, the four bridge processes' metrics = METRICS + 0,
# + 1 (broker-1) and + 10, + 11 (broker-2)), so each gets a block of free ports; broker-2
# listens on each MQTT port + 1000, which must be free too.
PORT_BLOCKS = {
    "FIELDHUB_PG_PORT": 2,
    "FIELDHUB_WEB_PORT": 3,
    "FIELDHUB_BRIDGE_METRICS_PORT": 12,
    "FIELDHUB_WEB_METRICS_PORT": 2,
}
SECOND_BROKER_OFFSET = endpoints.LOCAL_BROKER_PORT_STEP
MQTT_PORT_VARIABLES = (
    "FIELDHUB_MQTT_PORT",
    "FIELDHUB_MQTTS_PORT",
    "FIELDHUB_MQTTS_CERT_PORT",
    "FIELDHUB_MQTT_SERVICE_PORT",
)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_block(size: int, taken: set[int], companion_offset: int = 0) -> int:
    while True:
        first = free_port()
        block = list(range(first, first + size))
        if companion_offset:
            block.append(first + companion_offset)
        if max(block) < 65536 and not taken & set(block) and all(map(_port_free, block)):
            taken.update(block)
            return first


def _environment(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "READ_DATABASE_URL", "MQTT_URL", "MQTT_DEVICE_URL")
        and not k.startswith("FIELDHUB_")
    }
    env["FIELDHUB_HOME"] = str(home)
    taken: set[int] = set()
    for name in PORT_VARIABLES:
        offset = SECOND_BROKER_OFFSET if name in MQTT_PORT_VARIABLES else 0
        env[name] = str(_free_block(PORT_BLOCKS.get(name, 1), taken, offset))
    return env


def _fieldhub(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldhub", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _status(env: dict[str, str]) -> dict[str, Any]:
    result = _fieldhub(env, "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "status --json prints exactly one JSON object"
    status: dict[str, Any] = json.loads(lines[0])
    return status


@pytest.fixture
def stack_home() -> Iterator[tuple[Path, dict[str, str]]]:
    # Not tmp_path: the postgres and mosquitto users must be able to enter it.
    home = Path(tempfile.mkdtemp(prefix="fieldhub-test-up-"))
    home.chmod(0o755)
    env = _environment(home)
    try:
        yield home, env
    finally:
        _fieldhub(env, "down", timeout=180)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.integration
def test_up_status_restart_down_up(stack_home: tuple[Path, dict[str, str]]) -> None:
    home, env = stack_home
    settings = Settings.from_env(env)

    started = _fieldhub(env, "up", "--detach", "--demo")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"web:       http://127.0.0.1:{env['FIELDHUB_WEB_PORT']}/" in started.stdout
    assert "demo login: demo@example.com / " in started.stdout

    status = _status(env)
    assert status["running"] is True
    assert status["web_url"] == f"http://127.0.0.1:{env['FIELDHUB_WEB_PORT']}/"
    assert status["mqtt_url"] == f"mqtt://127.0.0.1:{env['FIELDHUB_MQTT_SERVICE_PORT']}"
    assert status["mqtt_device_url"] == f"mqtt://127.0.0.1:{env['FIELDHUB_MQTT_PORT']}"
    db_password = (home / "secrets" / "postgres.password").read_text().strip()
    assert status["database_url"] == (
        f"postgresql://fieldhub:***@127.0.0.1:{env['FIELDHUB_PG_PORT']}/fieldhub"
    )
    assert db_password not in json.dumps(status)
    processes = status["processes"]
    assert {"postgres", "mosquitto", "simulate"} <= processes.keys()
    for name, info in processes.items():
        assert info["state"] in ("running", "unavailable"), (name, info)
        if info["state"] == "running":
            assert process_start_time(info["pid"]) is not None, name

    database_url = endpoints.database_url(settings)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        registry.create_org(conn, "made-before-down")
        if (
            processes.get("bridge", {}).get("state")
            == processes.get("auth-sync", {}).get("state")
            == "running"
        ):
            # The demo's point: simulated values arrive within seconds of `up`.
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(DISTINCT device_id) FROM latest_values "
                        "JOIN devices USING (device_key) WHERE device_id LIKE 'demo-%'"
                    ).fetchone()
                    == {"count": 12}
                ),
                timeout=30,
                what="readings from all 12 demo devices",
            )

    # A supervised process killed outright is restarted, and the supervisor says so.
    old_pid = processes["mosquitto"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    # Polled in-process (what `status` prints), sparing a CLI start-up per poll.
    restarted = wait_for(
        lambda: (
            (p := stack_status(settings)["processes"]["mosquitto"])["state"] == "running"
            and p["pid"] != old_pid
            and p
        ),
        timeout=30,
        what="mosquitto to be restarted with a new pid",
    )
    assert restarted["restarts"] == 1
    assert wait_for(lambda: port_open(int(env["FIELDHUB_MQTT_SERVICE_PORT"])), what="MQTT back")
    supervisor_log = (home / "log" / "supervisor.log").read_text()
    assert f"mosquitto (pid {old_pid}) exited with code -9 (SIGKILL)" in supervisor_log

    before_down = _status(env)
    pids = [info["pid"] for info in before_down["processes"].values() if info["state"] == "running"]
    pids.append(before_down["supervisor_pid"])
    stopped = _fieldhub(env, "down", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the stack" in stopped.stdout
    # A zombie waiting for init to reap it counts as gone.
    assert [pid for pid in pids if same_process_alive(pid, None)] == []
    open_ports = [name for name in PORT_VARIABLES if port_open(int(env[name]))]
    assert open_ports == []
    status = _status(env)
    assert status["running"] is False
    assert _fieldhub(env, "status").returncode == 1

    # Data persists across down/up.
    again = _fieldhub(env, "up", "--detach")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo login" not in again.stdout
    with psycopg.connect(endpoints.database_url(settings), autocommit=True) as conn:
        orgs = {row[0] for row in conn.execute("SELECT name FROM organisations")}  # tuples
    assert {"made-before-down", "demo"} <= orgs
    assert "simulate" not in _status(env)["processes"]

    # A second `up` while one is running is refused with a clear message.
    twice = _fieldhub(env, "up", "--detach")
    assert twice.returncode == 2
    assert "already running" in twice.stderr


@pytest.mark.integration
def test_up_refuses_a_busy_port_before_starting_anything(
    stack_home: tuple[Path, dict[str, str]],
) -> None:
    home, env = stack_home
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["FIELDHUB_WEB_PORT"])))
        squatter.listen()
        result = _fieldhub(env, "up", timeout=60)
    assert result.returncode == 2
    assert f"ports already in use: {env['FIELDHUB_WEB_PORT']} (web)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (home / "postgres").exists()


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own http URL
        return int(response.status)


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (scripts/setup installs it for cluster mode)",
)
def test_cluster_mode_two_brokers_replica_two_bridges_two_webs_behind_nginx(
    stack_home: tuple[Path, dict[str, str]],
) -> None:
    home, env = stack_home
    settings = Settings.from_env(env)
    started = _fieldhub(env, "up", "--detach", "--cluster")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "(streaming replica)" in started.stdout

    status = _status(env)
    assert status["cluster"] is True
    replica_port = int(env["FIELDHUB_PG_PORT"]) + 1
    assert status["read_database_url"] == (
        f"postgresql://fieldhub:***@127.0.0.1:{replica_port}/fieldhub"
    )
    bridges = {f"bridge-{n}-broker-{k}" for n in (1, 2) for k in (1, 2)}
    expected = {"postgres", "postgres-replica", "mosquitto-broker-1", "mosquitto-broker-2", "nginx"}
    assert expected | bridges <= status["processes"].keys()
    assert {"auth-sync-broker-1", "auth-sync-broker-2"} <= status["processes"].keys()
    second_port = int(env["FIELDHUB_MQTT_PORT"]) + SECOND_BROKER_OFFSET
    assert status["brokers"]["broker-2"]["mqtt_device_url"] == f"mqtt://127.0.0.1:{second_port}"
    # Cluster mode runs two web instances behind nginx and never the single `web`.
    assert {"web-1", "web-2"} <= status["processes"].keys()
    assert "web" not in status["processes"]
    for name, info in status["processes"].items():
        assert info["state"] in ("running", "unavailable"), (name, info)
    # Each bridge, web instance and the worker serves metrics where `status --json` says, and
    # is ready; nginx relies on the web instances' readiness (tests/stack/test_health.py).
    with_metrics = {n for n, info in status["processes"].items() if info.get("metrics_url")}
    assert bridges | {"web-1", "web-2", "worker"} <= with_metrics
    for name in with_metrics:
        assert _http_status(status["processes"][name]["metrics_url"]) == 200, name
    for port in (int(env["FIELDHUB_WEB_PORT"]) + 1, int(env["FIELDHUB_WEB_PORT"]) + 2):
        assert _http_status(f"http://127.0.0.1:{port}/readyz") == 200

    # A write on the primary reaches the replica, which refuses writes of its own.
    primary_url = endpoints.database_url(settings)
    replica_url = primary_url.replace(f":{env['FIELDHUB_PG_PORT']}/", f":{replica_port}/")
    with psycopg.connect(primary_url, autocommit=True, row_factory=dict_row) as conn:
        registry.create_org(conn, "written-on-primary")
    with psycopg.connect(replica_url, autocommit=True) as replica:
        wait_for(
            lambda: replica.execute(
                "SELECT 1 FROM organisations WHERE name = 'written-on-primary'"
            ).fetchone(),
            what="the replica to replay the primary's write",
        )
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            replica.execute("CREATE TABLE nope (id int)")

    # Each bridge instance logs in as an account of its own on both brokers: the services
    # listener names its durable session after it, so no two processes share one.
    for n in (1, 2):
        for k in (1, 2):
            log_file = home / "log" / f"bridge-{n}-broker-{k}.log"

            def logged_in(f: Path = log_file, n: int = n) -> bool:
                return f"as svc.bridge-{n} (session present" in f.read_text()

            wait_for(
                logged_in,
                timeout=30,
                what=f"bridge-{n}-broker-{k} to log in as svc.bridge-{n}",
            )

    # nginx answers on the web port for whichever instance is up.
    web = status["web_url"]
    assert _http_status(web + "login") == 200
    # With one instance gone, nginx sends every request to the other.
    os.kill(status["processes"]["web-1"]["pid"], signal.SIGKILL)
    assert [_http_status(web + "login") for _ in range(5)] == [200] * 5
    operator = _operator_sees_the_replica(env, web, primary_url, replica_url)
    _nginx_passes_the_client_address(web, primary_url)

    # A bridge killed outright in the middle of a stream: the other one carries on, the
    # killed one comes back, and every reading the devices got a PUBACK for is stored once.
    with psycopg.connect(primary_url, autocommit=True, row_factory=dict_row) as conn:
        devices = provision(conn, org="stream", prefix="stream", count=20)
        target = Target("127.0.0.1", int(env["FIELDHUB_MQTT_PORT"]))
        assert wait_until_accepted(target, devices[-1], timeout=30)
        stats = Stats()
        streaming = threading.Event()
        runner = threading.Thread(
            target=lambda: asyncio.run(
                run_devices(devices, target, 0.1, streaming.is_set, stats=stats)
            ),
            daemon=True,
        )
        runner.start()
        try:
            wait_for(lambda: stats.published >= 200, timeout=30, what="the stream to start")
            _live_readings_through_nginx(operator, web, devices[0].device_id)
            old = status["processes"]["bridge-1-broker-1"]["pid"]
            os.kill(old, signal.SIGKILL)
            wait_for(
                lambda: (
                    (p := stack_status(settings)["processes"]["bridge-1-broker-1"])["state"]
                    == "running"
                    and p["pid"] != old
                ),
                timeout=30,
                what="bridge-1 to be restarted",
            )
            published_at_restart = stats.published
            wait_for(
                lambda: stats.published >= published_at_restart + 200,
                timeout=30,
                what="the stream to go on after the restart",
            )
        finally:
            streaming.set()
            runner.join(timeout=30)
        assert stack_status(settings)["processes"]["bridge-2-broker-1"]["restarts"] == 0
        # The restarted bridge-1 took back its own session only: bridge-2 was never kicked.
        for k in (1, 2):
            assert (
                "disconnected from the broker"
                not in (home / "log" / f"bridge-2-broker-{k}.log").read_text()
            )

        def stored() -> int:
            row = conn.execute(
                "SELECT count(*) AS n FROM readings JOIN devices USING (device_key) "
                "WHERE device_id LIKE 'stream-%%' AND metric = 'temperature'"
            ).fetchone()
            return int(row["n"]) if row else 0

        wait_for(lambda: stored() >= stats.published, timeout=60, what="every reading stored")
        assert stored() == stats.published

    _device_on_the_second_broker(env, primary_url)

    stopped = _fieldhub(env, "down", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert not port_open(int(env["FIELDHUB_WEB_PORT"]))
    assert not port_open(replica_port)
    assert not port_open(second_port)


def _live_readings_through_nginx(
    browser: urllib.request.OpenerDirector, web: str, device_id: str
) -> None:
    """The device page's live stream (server-sent events) works through nginx: readings the
    bridge commits arrive on it while the device publishes."""
    deadline = time.monotonic() + 20
    with browser.open(f"{web}devices/{device_id}/live", timeout=20) as stream:
        while time.monotonic() < deadline:
            if stream.readline().startswith(b"event: readings"):
                return
    raise AssertionError(f"no live readings for {device_id} through nginx within 20 s")


def _nginx_passes_the_client_address(web: str, primary_url: str) -> None:
    """The web instances trust the stack's nginx: a failed login through it counts against the
    client's address, not nginx's (which would lock every user out after 30 failures)."""
    port = urllib.parse.urlsplit(web).port
    assert port is not None
    client = SourceClient(port, "127.0.0.9")
    assert client.login("nobody@cluster.test", "not the password") == 401
    with psycopg.connect(primary_url, autocommit=True) as conn:
        keys = [r[0] for r in conn.execute("SELECT key FROM login_failures WHERE key LIKE 'ip:%'")]
    assert keys == ["ip:127.0.0.9"]


def _operator_sees_the_replica(
    env: dict[str, str], web: str, primary_url: str, replica_url: str
) -> urllib.request.OpenerDirector:
    """An operator logged in through nginx sees, on the system page, that reads come from the
    replica and how many bytes it is behind the primary: at least the WAL written while its
    replay was paused, and below that once it has caught up. Returns the logged-in browser."""
    new_user = ["user", "create", "ops@cluster.test", "--org", "written-on-primary"]
    created = _fieldhub(env, *new_user, "--role", "operator")
    assert created.returncode == 0, created.stderr
    password = re.search(r"password \(shown once\): (\S+)", created.stdout)
    assert password, created.stdout
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def get(path: str) -> str:
        with browser.open(web + path, timeout=10) as response:
            return str(response.read().decode())

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', get("login"))
    assert csrf
    form = {"email": "ops@cluster.test", "password": password.group(1), "csrf_token": csrf[1]}
    with browser.open(web + "login", urllib.parse.urlencode(form).encode(), timeout=10) as done:
        assert not done.url.endswith("/login"), "the operator could not log in"

    def bytes_behind() -> int | None:
        page = get("admin/system")
        assert "reads come from a streaming replica" in page
        shown = re.search(r'<td class="bytes-behind">(\d+)</td>', page)
        return int(shown[1]) if shown else None

    written = 2_000_000
    with (
        psycopg.connect(replica_url, autocommit=True) as replica,
        psycopg.connect(primary_url, autocommit=True) as primary,
    ):
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            # A WAL record of its own (no table needed) the paused replica cannot replay.
            primary.execute(
                "SELECT pg_logical_emit_message(false, 'lag-test', repeat('x', %s))", (written,)
            )
            wait_for(
                lambda: (bytes_behind() or 0) >= written,
                timeout=30,
                interval=0.5,
                what=f"the page to show the paused replica {written} bytes behind",
            )
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    wait_for(
        lambda: (b := bytes_behind()) is not None and b < written,
        timeout=60,
        interval=0.5,
        what="the page to show the replica caught up",
    )
    return browser


def _device_on_the_second_broker(env: dict[str, str], primary_url: str) -> None:
    """Created with the CLI, homed on broker-2 by its id: it logs in there and on broker-1 (its
    standby), its telemetry is stored once, and a command sent to it arrives through broker-2."""
    cli_env = {**env, "FIELDHUB_LOCAL_BROKERS": "2"}
    device_id = next(
        d
        for n in range(100)
        if home_broker(d := f"far-{n}", ["broker-1", "broker-2"]) == "broker-2"
    )
    assert _fieldhub(cli_env, "org", "create", "far").returncode == 0
    created = _fieldhub(cli_env, "device", "create", device_id, "--org", "far", "--json")
    assert created.returncode == 0, created.stderr
    creds = json.loads(created.stdout)
    second_port = int(env["FIELDHUB_MQTT_PORT"]) + SECOND_BROKER_OFFSET
    assert creds["broker"] == "broker-2"
    assert creds["mqtt_url"] == f"mqtt://127.0.0.1:{second_port}"
    # Its standby is the other broker: the order devices fall back in (docs/devices.md).
    assert creds["mqtt_urls"] == [
        creds["mqtt_url"],
        f"mqtt://127.0.0.1:{env['FIELDHUB_MQTT_PORT']}",
    ]

    def logs_in(port: int) -> bool:
        client = DeviceClient(port, device_id, creds["password"])
        try:
            return client.connect(raise_on_refusal=False)
        finally:
            client.close()

    wait_for(lambda: logs_in(second_port), timeout=30, what="broker-2's auth-sync to admit it")
    # broker-1 is its standby: every broker's files hold every device (issue #13).
    wait_for(
        lambda: logs_in(int(env["FIELDHUB_MQTT_PORT"])),
        timeout=30,
        what="broker-1's auth-sync to admit it as a standby",
    )

    device = DeviceClient(second_port, device_id, creds["password"])
    device.connect()
    try:
        device.subscribe(f"devices/{device_id}/commands/+")
        for seq in range(1, 21):
            payload = orjson.dumps({"seq": seq, "values": {"level": float(seq)}})
            device.publish(f"devices/{device_id}/telemetry", payload)
        with psycopg.connect(primary_url, autocommit=True, row_factory=dict_row) as conn:

            def stored() -> int:
                row = conn.execute(
                    "SELECT count(*) AS n FROM readings JOIN devices USING (device_key)"
                    " WHERE device_id = %s",
                    (device_id,),
                ).fetchone()
                return int(row["n"]) if row else 0

            wait_for(lambda: stored() >= 20, timeout=30, what="broker-2's telemetry stored")
            command = send_command(conn, device_id=device_id, name="ping", params={}, ttl_s=60)
            message = device.messages.get(timeout=30)
            assert message.topic == f"devices/{device_id}/commands/{command['id']}"
            device.publish(f"{message.topic}/ack", b'{"status": "succeeded"}')
            wait_for(
                lambda: get_command(conn, str(command["id"]))["status"] == "succeeded",
                timeout=30,
                what="the ack to come back through broker-2's bridges",
            )
            # Both bridge instances of broker-2 share its subscription: each message once.
            assert stored() == 20
    finally:
        device.close()


def test_status_text_lists_each_broker_when_there_are_several() -> None:
    status: dict[str, Any] = {
        "home": "/srv/fieldhub",
        "running": True,
        "supervisor_pid": 42,
        "web_url": "http://127.0.0.1:8000/",
        "mqtt_device_url": "mqtt://127.0.0.1:11883",
        "mqtt_url": "mqtt://127.0.0.1:11884",
        "database_url": "postgresql://fieldhub:***@127.0.0.1:15432/fieldhub",
        "brokers": {
            "broker-1": {"mqtt_device_url": "mqtt://127.0.0.1:11883"},
            "broker-2": {"mqtt_device_url": "mqtt://127.0.0.1:12883"},
        },
        "processes": {},
    }
    text = format_status(status)
    assert "  devices:  mqtt://127.0.0.1:11883 (broker-1)" in text
    assert "  devices:  mqtt://127.0.0.1:12883 (broker-2)" in text
    assert "  web:      http://127.0.0.1:8000/" in text


def test_log_files_are_rotated_by_size_keeping_a_bounded_count(tmp_path: Path) -> None:
    supervisor = Supervisor(
        log_dir=tmp_path / "log",
        state_file=tmp_path / "run" / "stack.json",
        poll_interval=0.05,
        log_max_bytes=2000,
        log_keep=2,
        log_check_s=0.05,
    )
    # A child that writes a numbered line every few milliseconds, as a server logs.
    writer = ProcessSpec(
        name="chatty",
        argv=(
            sys.executable,
            "-c",
            "import time\n"
            "for n in range(100000):\n"
            " print(f'line {n:06d}', flush=True); time.sleep(0.002)",
        ),
        stop_timeout=5,
    )
    supervisor.start(writer)
    log_file = tmp_path / "log" / "chatty.log"
    try:
        wait_for(
            lambda: (tmp_path / "log" / "chatty.log.2").exists(),
            timeout=30,
            what="two rotations",
        )
        first_after = wait_for(
            lambda: (lines := log_file.read_text().split()) and len(lines) > 4 and lines,
            what="the child to go on writing into the truncated file",
        )
    finally:
        supervisor.stop_all()
    assert not (tmp_path / "log" / "chatty.log.3").exists()  # bounded: keep=2
    assert log_file.stat().st_size < 20_000  # no hole of zeros from before the truncation
    assert "\0" not in log_file.read_text()
    newest_rotated = (tmp_path / "log" / "chatty.log.1").read_text().split()
    assert newest_rotated[-1] < first_after[-1]
