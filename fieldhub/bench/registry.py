"""Registry and broker-auth benchmarks.

`fieldhub bench provision`: bulk-provision 10,000 devices through `fieldhub device import`
with `fieldhub auth-sync` running, until the last one can log in (target < 30 s).
`fieldhub bench reconnect-storm`: 2,000 provisioned devices connect at once (target < 10 s),
and a SIGHUP reload is timed while they are all connected.
`fieldhub bench auth-mechanism`: the numbers behind docs/security.md: render + reload of the
password/ACL files at 100,000 devices versus the Dynamic Security plugin.

Each benchmark starts its own PostgreSQL and Mosquitto in a scratch directory, with the same
code as `fieldhub up`, so it measures the real servers without touching the local stack.
Also runnable without the bench command: `python -m fieldhub.bench.registry provision`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.broker.auth_sync import sync_once
from fieldhub.broker.mosquitto import DEVICE_PASSWORD_FILE, SERVICE_PASSWORD_FILE, MosquittoBroker
from fieldhub.cli import Subparsers
from fieldhub.core import registry
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.passwords import ITERATIONS, generate_secret, hash_secret, hash_secrets_parallel
from fieldhub.core.procs import chown_tree, free_port, require_binary, wait_until
from fieldhub.core.tls import ensure_tls
from fieldhub.stack.postgres import PostgresCluster

BENCH_ORG = "bench"
DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)


@dataclasses.dataclass
class Servers:
    database_url: str
    broker: MosquittoBroker
    workdir: Path


@contextlib.contextmanager
def scratch_servers(prefix: str) -> Iterator[Servers]:
    """A migrated PostgreSQL and a Mosquitto broker of our own, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the postgres and mosquitto users traverse into it
    cluster = PostgresCluster(base / "pg", free_port(), base / "pg.password")
    cluster.init()
    cluster.start()
    broker_proc: subprocess.Popen[bytes] | None = None
    try:
        cluster.create_database("fieldhub")
        apply_migrations(cluster.url("fieldhub"))
        ensure_tls(base / "tls", ["localhost"])
        broker = MosquittoBroker(
            base / "broker",
            base / "tls",
            free_port(),
            free_port(),
            free_port(),
            tls_bind="127.0.0.1",
        )
        broker_proc = broker.start(base / "mosquitto.log")
        yield Servers(cluster.url("fieldhub"), broker, base)
    finally:
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(timeout=30)
        cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


# -- a minimal MQTT 3.1.1 client: thousands of connections without a thread each ----------


def _mqtt_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(username: str, password: str, *, keepalive: int = 300) -> bytes:
    variable = _mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", keepalive)
    payload = _mqtt_string(username) + _mqtt_string(username) + _mqtt_string(password)
    body = variable + payload
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x10]) + bytes(encoded) + body


async def _connect_one(
    port: int, username: str, password: str, timeout: float
) -> tuple[asyncio.StreamWriter | None, float, int]:
    """Connect and wait for CONNACK; (open writer or None, seconds, return code or -1)."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(connect_packet(username, password))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None, time.perf_counter() - started, -1
    code = connack[3]
    if code != 0:
        writer.close()
        return None, time.perf_counter() - started, code
    return writer, time.perf_counter() - started, 0


async def connect_all(
    port: int, credentials: Sequence[tuple[str, str]], timeout: float = 60.0
) -> tuple[list[asyncio.StreamWriter], list[float], int]:
    """Connect every device at the same moment; (open connections, latencies, failures)."""
    results = await asyncio.gather(
        *(_connect_one(port, user, password, timeout) for user, password in credentials)
    )
    writers = [w for w, _, code in results if w is not None and code == 0]
    return writers, [seconds for _, seconds, _ in results], len(results) - len(writers)


async def close_all(writers: Sequence[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


def login_works(port: int, username: str, password: str) -> bool:
    """One blocking CONNECT/CONNACK round trip: True if the broker accepts the login."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(connect_packet(username, password))
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
    except OSError:
        return False
    return connack[3] == 0


def timed_reload(broker: MosquittoBroker, probe: tuple[str, str]) -> float:
    """SIGHUP, then how long until the broker answers a new CONNECT (it is single-threaded,
    so the answer comes only after the reload, including re-checking connected clients)."""
    started = time.perf_counter()
    broker.reload()
    time.sleep(0.001)  # let the signal land before the probe connects
    assert login_works(broker.mqtt_devices, *probe), "probe login failed after reload"
    return time.perf_counter() - started


# -- provisioning -----------------------------------------------------------------------


def provision_direct(
    database_url: str, count: int, prefix: str, iterations: int = ITERATIONS
) -> list[tuple[str, str]]:
    """Provision `count` devices through the registry's bulk path; returns (id, secret)."""
    ids = [f"{prefix}-{i:06d}" for i in range(count)]
    secrets = [generate_secret() for _ in ids]
    hashes = hash_secrets_parallel(secrets, iterations=iterations)
    with connect(database_url, autocommit=True) as conn:
        with contextlib.suppress(registry.RegistryError):
            registry.create_org(conn, BENCH_ORG)
        registry.provision_devices(
            conn,
            BENCH_ORG,
            [(registry.DeviceSpec(i), h) for i, h in zip(ids, hashes, strict=True)],
        )
    return list(zip(ids, secrets, strict=True))


def _fieldhub_env(servers: Servers) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "FIELDHUB_MOSQUITTO_DIR": str(servers.broker.base_dir),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(servers.broker.pid_file),
        "FIELDHUB_LOG_LEVEL": "WARNING",
    }


def bench_provision(devices: int = 10_000) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-provision-") as servers:
        with connect(servers.database_url, autocommit=True) as conn:
            registry.create_org(conn, BENCH_ORG)
            registry.ensure_service_account(conn, "svc.bench", [], generate_secret())
        env = _fieldhub_env(servers)
        sync_proc = subprocess.Popen(
            [sys.executable, "-m", "fieldhub.cli", "auth-sync"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            passwords_file = servers.broker.auth_dir / SERVICE_PASSWORD_FILE
            wait_until(
                lambda: "svc.bench:" in passwords_file.read_text(),
                timeout=30,
                what="auth-sync's first render",
            )
            source = servers.workdir / "devices.csv"
            source.write_text(
                "device_id,name,labels\n"
                + "".join(f"bench-{i:06d},Bench {i},fleet=bench\n" for i in range(devices))
            )
            out = servers.workdir / "credentials.csv"
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable, "-m", "fieldhub.cli", "device", "import", str(source),
                    "--org", BENCH_ORG, "--out", str(out),
                ],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            imported = time.perf_counter() - started
            rows = out.read_text().splitlines()[1:]
            last_id, _, last_secret = rows[-1].split(",")[:3]
            wait_until(
                lambda: login_works(servers.broker.mqtt_devices, last_id, last_secret),
                timeout=120,
                interval=0.02,
                what="the last imported device to log in",
            )
            total = time.perf_counter() - started
        finally:
            sync_proc.send_signal(signal.SIGTERM)
            sync_proc.wait(timeout=30)
    return {
        "devices": devices,
        "import_s": round(imported, 2),
        "import_to_broker_login_s": round(total - imported, 2),
        "total_s": round(total, 2),
        "target_s": 30,
        "ok": total < 30,
    }


def bench_reconnect_storm(devices: int = 2_000, iterations: int = ITERATIONS) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-storm-") as servers:
        credentials = provision_direct(servers.database_url, devices, "storm", iterations)
        with connect(servers.database_url, autocommit=True) as conn:
            sync_once(conn, servers.broker.auth_dir)
        servers.broker.reload()
        wait_until(
            lambda: login_works(servers.broker.mqtt_devices, *credentials[-1]),
            timeout=30,
            what="the devices to be accepted",
        )
        probe = credentials[0]
        reload_idle = min(timed_reload(servers.broker, probe) for _ in range(3))

        async def storm() -> dict[str, Any]:
            # The first wave stands for the fleet being online; the timed one is the fleet
            # coming back at once after a broker restart or a network cut.
            first, _, failed_first = await connect_all(servers.broker.mqtt_devices, credentials)
            await close_all(first)
            started = time.perf_counter()
            writers, latencies, failed = await connect_all(servers.broker.mqtt_devices, credentials)
            elapsed = time.perf_counter() - started
            loop = asyncio.get_running_loop()
            reload_connected = await loop.run_in_executor(None, timed_reload, servers.broker, probe)
            still_open = sum(1 for w in writers if not w.is_closing())
            await close_all(writers)
            ordered = sorted(latencies)
            return {
                "storm_s": round(elapsed, 2),
                "connack_p50_s": round(statistics.median(ordered), 3),
                "connack_p99_s": round(ordered[int(len(ordered) * 0.99) - 1], 3),
                "failed": failed + failed_first,
                "reload_with_all_connected_s": round(reload_connected, 3),
                "connected_after_reload": still_open,
            }

        result = asyncio.run(storm())
    return {
        "devices": devices,
        "hash_iterations": iterations,
        **result,
        "reload_idle_s": round(reload_idle, 3),
        "target_s": 10,
        "ok": result["storm_s"] < 10 and result["failed"] == 0,
    }


# -- mechanism choice: files + SIGHUP versus Dynamic Security ---------------------------


def bench_files_at_scale(
    devices: int = 100_000, connected: int = 1_000, iterations: int = ITERATIONS
) -> dict[str, Any]:
    """Render + write + reload at `devices` registry rows, idle and with clients connected.

    All rows share one precomputed hash: rendering and Mosquitto's parsing do not depend on
    the hash value, and hashing 100,000 distinct secrets would only measure PBKDF2 again."""
    with scratch_servers("fieldhub-bench-files-") as servers:
        credentials = provision_direct(servers.database_url, connected, "live", iterations)
        shared_hash = hash_secret(generate_secret())
        with connect(servers.database_url, autocommit=True) as conn:
            bulk = [
                (registry.DeviceSpec(f"bulk-{i:06d}"), shared_hash)
                for i in range(devices - connected)
            ]
            registry.provision_devices(conn, BENCH_ORG, bulk)
            started = time.perf_counter()
            sync_once(conn, servers.broker.auth_dir)
            render_s = time.perf_counter() - started
            size = (servers.broker.auth_dir / DEVICE_PASSWORD_FILE).stat().st_size
            probe = credentials[0]
            reload_idle = [timed_reload(servers.broker, probe) for _ in range(3)]
            one_change: list[float] = []
            for i in range(3):
                registry.set_enabled(conn, f"bulk-{i:06d}", False)
                started = time.perf_counter()
                sync_once(conn, servers.broker.auth_dir)
                servers.broker.reload()
                wait_until(
                    lambda: login_works(servers.broker.mqtt_devices, *probe),
                    timeout=60,
                    what="the broker to answer",
                )
                one_change.append(time.perf_counter() - started)

        async def with_connected() -> float:
            writers, _, failed = await connect_all(servers.broker.mqtt_devices, credentials)
            assert failed == 0, f"{failed} of {len(credentials)} could not connect"
            loop = asyncio.get_running_loop()
            seconds = await loop.run_in_executor(None, timed_reload, servers.broker, probe)
            await close_all(writers)
            return seconds

        reload_connected = asyncio.run(with_connected())
    return {
        "devices": devices,
        "hash_iterations": iterations,
        "password_file_mb": round(size / 1e6, 1),
        "render_and_write_s": round(render_s, 3),
        "reload_idle_s": round(min(reload_idle), 3),
        "one_change_render_reload_s": round(statistics.median(one_change), 3),
        f"reload_with_{connected}_connected_s": round(reload_connected, 3),
        "reload_per_connected_client_ms": round(
            max(0.0, reload_connected - min(reload_idle)) / connected * 1000, 3
        ),
    }


class ControlClient:
    """Dynamic Security's admin API: a request on $CONTROL, its answer on .../response."""

    TOPIC = "$CONTROL/dynamic-security/v1"

    def __init__(self, port: int, username: str, password: str) -> None:
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username)
        self.client.username_pw_set(username, password)
        self.client.on_message = lambda c, u, m: self.answers.put(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        done = self.client.subscribe(self.TOPIC + "/response", qos=1)
        assert done[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # the SUBACK; a lost first answer would show as a timeout below

    def call(self, command: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.client.publish(self.TOPIC, json.dumps({"commands": [command]}), qos=1)
        answer = self.answers.get(timeout=120)
        elapsed = time.perf_counter() - started
        error = answer["responses"][0].get("error")
        if error:
            raise RuntimeError(f"{command['command']}: {error}")
        return elapsed

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _dynsec_plugin() -> Path:
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError("mosquitto_dynamic_security.so not found (dpkg -L mosquitto)")


@contextlib.contextmanager
def dynsec_broker(preloaded_clients: int) -> Iterator[tuple[int, float, Path]]:
    """A Mosquitto with only Dynamic Security; yields (port, startup seconds, json file)."""
    base = Path(tempfile.mkdtemp(prefix="fieldhub-bench-dynsec-"))
    base.chmod(0o755)
    state = base / "dynamic-security.json"
    subprocess.run(
        [require_binary("mosquitto_ctrl"), "dynsec", "init", str(state), "admin", "admin-secret"],
        check=True,
        capture_output=True,
    )
    if preloaded_clients:
        data = json.loads(state.read_text())
        admin = data["clients"][0]
        for i in range(preloaded_clients):
            data["clients"].append(
                {
                    "username": f"pre-{i:06d}",
                    "textname": "",
                    "roles": [],
                    "password": admin["password"],
                    "salt": admin["salt"],
                    "iterations": admin["iterations"],
                }
            )
        state.write_text(json.dumps(data, indent="\t"))
    port = free_port()
    conf = base / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"plugin {_dynsec_plugin()}\nplugin_opt_config_file {state}\n"
        "log_dest stderr\nlog_type error\n"
    )
    chown_tree(base, "mosquitto")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [require_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or login_works(port, "admin", "admin-secret"),
            timeout=300,
            interval=0.02,
            what="dynsec broker",
        )
        if proc.poll() is not None:
            raise RuntimeError("the Dynamic Security broker did not start")
        yield port, time.perf_counter() - started, state
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def bench_dynsec(
    grow_to: int = 1_000, preloaded: int = 100_000, changes: int = 10
) -> dict[str, Any]:
    """Add clients one by one as the JSON grows, then single changes at `preloaded` clients."""
    result: dict[str, Any] = {}
    with dynsec_broker(0) as (port, _, _state):
        admin = ControlClient(port, "admin", "admin-secret")
        try:
            latencies = [
                admin.call(
                    {"command": "createClient", "username": f"grow-{i:06d}", "password": "s"}
                )
                for i in range(grow_to)
            ]
        finally:
            admin.close()
        result[f"add_{grow_to}_one_by_one_s"] = round(sum(latencies), 2)
        result["add_first_100_ms_avg"] = round(statistics.mean(latencies[:100]) * 1000, 2)
        result["add_last_100_ms_avg"] = round(statistics.mean(latencies[-100:]) * 1000, 2)
    with dynsec_broker(preloaded) as (port, startup_s, state):
        result[f"startup_with_{preloaded}_clients_s"] = round(startup_s, 2)
        result["json_file_mb"] = round(state.stat().st_size / 1e6, 1)
        admin = ControlClient(port, "admin", "admin-secret")
        try:
            adds = [
                admin.call({"command": "createClient", "username": f"new-{i}", "password": "s"})
                for i in range(changes)
            ]
            disables = [
                admin.call({"command": "disableClient", "username": f"pre-{i:06d}"})
                for i in range(changes)
            ]
        finally:
            admin.close()
        result[f"add_one_at_{preloaded}_ms"] = round(statistics.median(adds) * 1000, 1)
        result[f"disable_one_at_{preloaded}_ms"] = round(statistics.median(disables) * 1000, 1)
        result[f"bulk_{preloaded}_one_by_one_estimate_s"] = round(
            statistics.median(adds) * preloaded / 2, 0
        )
    return result


def bench_auth_mechanism(devices: int = 100_000) -> dict[str, Any]:
    return {"files": bench_files_at_scale(devices), "dynsec": bench_dynsec(preloaded=devices)}


# -- command line -----------------------------------------------------------------------

BENCHES: dict[str, tuple[Callable[[int], dict[str, Any]], int, str]] = {
    "provision": (bench_provision, 10_000, "bulk-provision devices until they can log in"),
    "reconnect-storm": (bench_reconnect_storm, 2_000, "devices reconnecting all at once"),
    "auth-mechanism": (bench_auth_mechanism, 100_000, "files+SIGHUP vs Dynamic Security"),
}


def register(subparsers: Subparsers) -> None:
    """Add this module's benchmarks to `fieldhub bench`'s subcommands."""
    for name, (_, default, helptext) in BENCHES.items():
        sub = subparsers.add_parser(name, help=helptext)
        sub.add_argument("--devices", type=int, default=default)
        sub.set_defaults(handler=run_bench, bench=name)


def run_bench(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    function = BENCHES[args.bench][0]
    result = function(args.devices)
    print(json.dumps({"bench": args.bench, **result}, indent=2))
    ok = result.get("ok", True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.registry")
    register(parser.add_subparsers(dest="bench_name", required=True))
    args = parser.parse_args(argv)
    return run_bench(None, args)


if __name__ == "__main__":
    sys.exit(main())
