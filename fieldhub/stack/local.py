"""The local stack behind `fieldhub up`, `fieldhub status` and `fieldhub down`.

`up` brings the pieces up in dependency order, each one ready before the next starts:
PostgreSQL (a supervised `postgres` child, run as the `postgres` user when we are root) ->
database + migrations + the bridge's broker account -> Mosquitto -> a first registry sync ->
the fieldhub processes (auth-sync, bridge, worker, web, and the simulator with --demo), a
fixed list. With DATABASE_URL / MQTT_URL set, the matching local server is not started.

Everything runs under one `Supervisor`; its state file is what `status` and `down` read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from fieldhub.broker.auth_sync import sync_once
from fieldhub.broker.mosquitto import BROKER_USER, MosquittoBroker
from fieldhub.core import endpoints, registry
from fieldhub.core.config import Settings
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import port_open, running_as_root
from fieldhub.core.tls import ensure_tls
from fieldhub.stack import cluster as cluster_mod
from fieldhub.stack.postgres import PG_USER, PostgresCluster, local_cluster, pg_bindir
from fieldhub.stack.supervisor import (
    ProcessSpec,
    StartupError,
    Supervisor,
    read_state,
    same_process_alive,
    stop_recorded,
    tail,
)

log = logging.getLogger("fieldhub.stack")

DETACH_TIMEOUT_S = 300.0


class StackError(Exception):
    """`up`/`down` cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class StackPaths:
    home: Path

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "supervisor.log"

    @property
    def detach_log(self) -> Path:
        return self.log_dir / "up.log"


# -- readiness probes --------------------------------------------------------------------------
def http_answers(url: str, *, ok_below: int = 500) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                return int(response.status) < ok_below
        except urllib.error.HTTPError as exc:
            return exc.code < ok_below
        except (urllib.error.URLError, OSError):
            return False

    return probe


def postgres_accepts(cluster: PostgresCluster) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with psycopg.connect(cluster.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    return probe


def fieldhub_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "fieldhub", *args)


# -- the specs ------------------------------------------------------------------------------
def postgres_spec(cluster: PostgresCluster) -> ProcessSpec:
    return ProcessSpec(
        name="postgres",
        argv=(str(pg_bindir() / "postgres"), "-D", str(cluster.pgdata)),
        ready=postgres_accepts(cluster),
        ready_timeout=60,
        user=PG_USER,
        # SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop -m fast` sends).
        stop_signal=signal.SIGINT,
        stop_timeout=60,
        cwd=cluster.pgdata,
    )


def mosquitto_spec(broker: MosquittoBroker, name: str = "mosquitto") -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=tuple(broker.command()),
        ready=lambda: port_open(broker.mqtt_services, broker.bind)
        and port_open(broker.mqtt_devices, broker.bind),
        ready_timeout=30,
    )


def service_specs(
    settings: Settings,
    *,
    demo: bool,
    cluster: bool = False,
    read_database_url: str | None = None,
) -> list[ProcessSpec]:
    """The fieldhub processes of the stack; cluster mode runs bridges and web servers twice
    (nginx, which fronts the web servers, is started by the caller once they answer).

    With several brokers there is one auth-sync per broker and one bridge process per
    (instance, broker) pair: a bridge instance is the group of its per-broker processes.
    """
    urls = endpoints.stack_urls(settings)
    specs = []
    brokers = settings.broker_names
    several = len(brokers) > 1
    # Children see the same broker list as this process, however it was decided (--cluster).
    broker_env = {"FIELDHUB_LOCAL_BROKERS": str(settings.local_brokers)}

    def add(
        name: str,
        argv: tuple[str, ...],
        probe: Callable[[], bool] | None = None,
        timeout: float = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        specs.append(
            ProcessSpec(
                name=name,
                argv=argv,
                ready=probe,
                ready_timeout=timeout,
                essential=False,
                env={**broker_env, **(env or {})},
            )
        )

    for broker in brokers:
        if not several:
            add("auth-sync", fieldhub_argv("auth-sync"))
            continue
        add(
            f"auth-sync-{broker}",
            fieldhub_argv("auth-sync", "--broker", broker),
            env=local_broker_env(settings, broker),
        )
    # A bridge is ready when its metrics endpoint answers.
    instances = cluster_mod.BRIDGES if cluster else 1
    for n in range(1, instances + 1):
        for k, broker in enumerate(brokers):
            port = bridge_metrics_port(settings, n, k, instances)
            name = "bridge" if instances == 1 and not several else f"bridge-{n}"
            argv = ["bridge", "--instance", str(n), "--metrics-port", str(port)]
            if several:
                name += f"-{broker}"
                argv += ["--broker", broker]
            add(
                name,
                fieldhub_argv(*argv),
                http_answers(f"http://127.0.0.1:{port}/metrics"),
                30,
            )
    add("worker", fieldhub_argv("worker"))
    web_env = {"READ_DATABASE_URL": read_database_url} if read_database_url else None
    if cluster:
        for n, port in enumerate(cluster_mod.web_instance_ports(settings), start=1):
            add(
                f"web-{n}",
                fieldhub_argv("web", "--bind", f"127.0.0.1:{port}"),
                http_answers(f"http://127.0.0.1:{port}/"),
                60,
                web_env,
            )
    else:
        add("web", fieldhub_argv("web"), http_answers(str(urls["web_url"])), 60, web_env)
    if demo:
        from fieldhub.sim.demo import DEMO_DEVICES, DEMO_INTERVAL_S, DEMO_ORG

        specs.append(
            ProcessSpec(
                name="simulate",
                argv=fieldhub_argv(
                    "simulate",
                    "--devices",
                    str(DEMO_DEVICES),
                    "--interval",
                    str(DEMO_INTERVAL_S),
                    "--org",
                    DEMO_ORG,
                    "--prefix",
                    DEMO_ORG,
                ),
                # The simulator connects every device to one broker URL, so it homes its
                # devices on broker-1 (see docs/scaling.md, "Not in this build yet").
                env={"FIELDHUB_LOCAL_BROKERS": "1"},
            )
        )
    return specs


def bridge_metrics_port(
    settings: Settings, instance: int, broker_index: int, instances: int
) -> int:
    """Instance N of broker 1 keeps METRICS + N - 1; each further broker's bridges follow."""
    return settings.ports.bridge_metrics + broker_index * instances + instance - 1


def local_broker_env(settings: Settings, broker: str) -> dict[str, str]:
    """Where auth-sync finds one local broker's files (broker-1 keeps the configured ones)."""
    if broker == settings.broker_names[0]:
        return {}
    directory = endpoints.local_broker_dir(settings, broker)
    return {
        "FIELDHUB_MOSQUITTO_DIR": str(directory),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(directory / "mosquitto.pid"),
    }


def local_brokers(settings: Settings) -> list[tuple[str, MosquittoBroker]]:
    return [
        (
            name,
            MosquittoBroker(
                endpoints.local_broker_dir(settings, name),
                settings.tls_dir,
                endpoints.local_broker_ports(settings, name).devices,
                endpoints.local_broker_ports(settings, name).devices_tls,
                endpoints.local_broker_ports(settings, name).services,
            ),
        )
        for name in settings.broker_names
    ]


def with_cluster_brokers(settings: Settings) -> Settings:
    """`--cluster` runs at least two local brokers (unless the brokers are configured)."""
    if settings.brokers or settings.mqtt_url or settings.local_brokers >= cluster_mod.BROKERS:
        return settings
    return dataclasses.replace(settings, local_brokers=cluster_mod.BROKERS)


# -- up ---------------------------------------------------------------------------------------
def raise_open_file_limit() -> None:
    """Children inherit this: a broker or simulator with 10,000 clients needs the fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_home(paths: StackPaths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    for directory in (paths.run_dir, paths.log_dir):
        directory.mkdir(exist_ok=True)
    if running_as_root() and not _service_users_can_enter(paths.home):
        # A clone under /root (mode 0700 on Debian) is the usual case. The servers drop to
        # their own users and must pass through every parent directory: grant search only
        # (o+x: enter by exact path, not list), and say so.
        for directory in [*reversed(paths.home.parents), paths.home]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning(
                    "allowing other users to pass through %s (chmod o+x) so the %s and %s "
                    "users can reach %s",
                    directory,
                    PG_USER,
                    BROKER_USER,
                    paths.home,
                )
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        if not _service_users_can_enter(paths.home):
            raise StackError(
                f"the {PG_USER} or {BROKER_USER} user cannot enter {paths.home}; make it and "
                "its parent directories searchable (chmod o+x) or choose another FIELDHUB_HOME"
            )


def _service_users_can_enter(directory: Path) -> bool:
    return all(
        subprocess.run(
            ["runuser", "-u", user, "--", "test", "-x", str(directory)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
        for user in (PG_USER, BROKER_USER)
    )


def check_ports_free(ports: Sequence[tuple[str, int]]) -> None:
    busy = [f"{port} ({what})" for what, port in ports if port_open(port)]
    if busy:
        raise StackError(
            "ports already in use: "
            + ", ".join(busy)
            + "; is another stack running? (`fieldhub status`), or set the FIELDHUB_*_PORT "
            "variables (see README)"
        )


def running_state(paths: StackPaths) -> dict[str, Any] | None:
    state = read_state(paths.state_file)
    if state and same_process_alive(
        state.get("supervisor_pid"), state.get("supervisor_start_time")
    ):
        return state
    return None


def run_up(
    settings: Settings,
    *,
    demo: bool,
    announce: Callable[[str], None],
    cluster: bool = False,
) -> int:
    """Bring the stack up in this process and supervise it until SIGINT/SIGTERM."""
    if cluster:
        settings = with_cluster_brokers(settings)
    paths = StackPaths(settings.home)
    check_home(paths)
    state = running_state(paths)
    if state:
        raise StackError(
            f"the stack under {paths.home} is already running (supervisor pid "
            f"{state['supervisor_pid']}); `fieldhub status` shows it, `fieldhub down` stops it"
        )
    clean_leftovers(paths)
    file_log = logging.FileHandler(paths.supervisor_log)
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_log)
    raise_open_file_limit()

    local_db = settings.database_url is None
    local_broker = settings.mqtt_url is None and not settings.brokers
    ports: list[tuple[str, int]] = [("web", settings.ports.web)]
    if local_db:
        ports.append(("PostgreSQL", settings.ports.postgres))
    if cluster:
        if local_db:
            ports.append(("PostgreSQL replica", cluster_mod.replica_port(settings)))
        ports += [("web instance", port) for port in cluster_mod.web_instance_ports(settings)]
    if local_broker:
        for name in settings.broker_names:
            broker_ports = endpoints.local_broker_ports(settings, name)
            ports += [
                (f"MQTT devices, {name}", broker_ports.devices),
                (f"MQTT devices TLS, {name}", broker_ports.devices_tls),
                (f"MQTT services, {name}", broker_ports.services),
            ]
    check_ports_free(ports)

    supervisor = Supervisor(
        log_dir=paths.log_dir,
        state_file=paths.state_file,
        info={
            "home": str(paths.home),
            "demo": demo,
            "cluster": cluster,
            "urls": endpoints.stack_urls(settings),
            "brokers": endpoints.broker_urls(settings),
        },
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping the stack", signal.Signals(signum).name)
        stop.set()
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        read_url = _bring_up(
            settings,
            supervisor,
            demo=demo,
            cluster=cluster,
            local_db=local_db,
            local_broker=local_broker,
        )
        if stop.is_set():
            return 130
        supervisor.info["urls"] = {
            **endpoints.stack_urls(settings),
            "read_database_url": endpoints.mask_url(read_url) if read_url else None,
        }
        supervisor.set_phase("running")
        announce(banner(settings, supervisor.snapshot()))
        stop.wait()
        return 0
    except StartupError as exc:
        if stop.is_set():
            return 130
        raise StackError(str(exc)) from None
    finally:
        supervisor.stop_all()
        with contextlib.suppress(FileNotFoundError):
            paths.state_file.unlink()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("the stack is down")
        logging.getLogger().removeHandler(file_log)
        file_log.close()


def _bring_up(
    settings: Settings,
    supervisor: Supervisor,
    *,
    demo: bool,
    cluster: bool,
    local_db: bool,
    local_broker: bool,
) -> str | None:
    """Start everything in dependency order; return the URL the web app reads from, if it is
    not the primary."""
    read_database_url = settings.read_database_url
    if local_db:
        primary = local_cluster(settings)
        if not primary.initialised:
            log.info("creating the PostgreSQL cluster in %s", primary.data_dir)
        primary.init()
        supervisor.start(postgres_spec(primary))
        primary.create_database(endpoints.LOCAL_DB_NAME)
    database_url = endpoints.database_url(settings)
    apply_migrations(database_url)  # logs each migration it applies
    if cluster and local_db and read_database_url is None:
        replica = cluster_mod.replica_cluster(settings)
        if cluster_mod.init_replica(primary, replica):
            log.info("created the streaming replica in %s", replica.data_dir)
        supervisor.start(cluster_mod.replica_spec(replica))
        read_database_url = cluster_mod.replica_url(settings)
    # One bridge account for every broker: each broker's auth-sync renders every service account.
    bridge = endpoints.bridge_mqtt(settings, settings.broker_names[0])
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        if bridge.username and bridge.password:
            registry.ensure_service_account(
                conn, bridge.username, registry.BRIDGE_ACL, bridge.password
            )
        demo_login = None
        if demo:
            from fieldhub.sim.demo import ensure_demo

            demo_login = ensure_demo(conn, settings.secrets_dir)
            supervisor.info["demo_login"] = {
                "email": demo_login.email,
                "password_file": str(demo_login.password_file),
                "user_created": demo_login.created,
            }
        if local_broker:
            ensure_tls(settings.tls_dir)
            brokers = local_brokers(settings)
            for name, broker in brokers:
                broker.render()
                spec_name = "mosquitto" if len(brokers) == 1 else f"mosquitto-{name}"
                supervisor.start(mosquitto_spec(broker, spec_name))
                # One sync now, so the bridge can log in even before auth-sync is up.
                if sync_once(conn, broker.auth_dir, broker=name, operator_dir=settings.acl_dir):
                    broker.reload()
    for spec in service_specs(
        settings,
        demo=demo,
        cluster=cluster,
        read_database_url=read_database_url,
    ):
        supervisor.start(spec)
    if cluster:
        conf = cluster_mod.render_nginx(settings, cluster_mod.web_instance_ports(settings))
        supervisor.start(
            cluster_mod.nginx_spec(settings, conf, http_answers(endpoints.web_url(settings)))
        )
    return read_database_url


def banner(settings: Settings, state: dict[str, Any]) -> str:
    urls = state.get("urls", {})
    lines = [
        "",
        f"fieldhub is up (home {state.get('home')})",
        f"  web:       {urls.get('web_url')}",
        f"  devices:   {urls.get('mqtt_device_url')}"
        + (f"  (TLS: {urls['mqtts_device_url']})" if urls.get("mqtts_device_url") else ""),
        f"  database:  {urls.get('database_url')}",
    ]
    if urls.get("read_database_url"):
        lines.append(f"  reads:     {urls['read_database_url']} (streaming replica)")
    brokers = state.get("brokers") or {}
    if len(brokers) > 1:
        for name, broker in brokers.items():
            lines.append(f"  {name + ':':<10} {broker['mqtt_device_url']} (devices homed there)")
        lines.append(
            f"  run CLI commands with FIELDHUB_LOCAL_BROKERS={len(brokers)} so new devices "
            "are spread over the brokers"
        )
    login = state.get("demo_login")
    if login:
        password = Path(login["password_file"]).read_text().strip()
        if login.get("user_created") is None:
            lines.append("  demo login: not available yet (no user module in this build)")
        else:
            lines.append(f"  demo login: {login['email']} / {password}")
    unavailable = state.get("unavailable") or {}
    if unavailable:
        lines.append("  not available yet: " + ", ".join(sorted(unavailable)))
    lines.append("  `fieldhub status` shows every process; logs are in " + str(settings.log_dir))
    return "\n".join(lines) + "\n"


# -- detach -------------------------------------------------------------------------------------
def detach_up(
    settings: Settings, *, demo: bool, verbose: bool, cluster: bool = False
) -> tuple[int, str]:
    """Start `up` as a daemon (own session, output to home/log/up.log); wait until it is up."""
    paths = StackPaths(settings.home)
    check_home(paths)
    state = running_state(paths)
    if state:
        raise StackError(
            f"the stack under {paths.home} is already running (supervisor pid "
            f"{state['supervisor_pid']}); `fieldhub down` stops it"
        )
    argv = [*fieldhub_argv(*(["-v"] if verbose else []), "up", "--foreground-daemon")]
    if demo:
        argv.append("--demo")
    if cluster:
        argv.append("--cluster")
    with paths.detach_log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    while True:
        state = read_state(paths.state_file)
        if state and state.get("supervisor_pid") == proc.pid and state.get("phase") == "running":
            return 0, banner(settings, state)
        if proc.poll() is not None:
            return 1, (
                f"the stack did not come up (exit {proc.returncode}); from {paths.detach_log}:\n"
                + tail(paths.detach_log, 30)
            )
        if time.monotonic() > deadline:
            return 1, (
                f"the stack is still not up after {DETACH_TIMEOUT_S:.0f} s (pid {proc.pid}); "
                f"see {paths.detach_log}"
            )
        time.sleep(0.1)


# -- status -------------------------------------------------------------------------------------
def stack_status(settings: Settings) -> dict[str, Any]:
    paths = StackPaths(settings.home)
    state = read_state(paths.state_file)
    supervisor_alive = bool(
        state
        and same_process_alive(state.get("supervisor_pid"), state.get("supervisor_start_time"))
    )
    urls = endpoints.stack_urls(settings)
    result: dict[str, Any] = {
        "running": supervisor_alive,
        "phase": (state or {}).get("phase", "stopped") if supervisor_alive else "stopped",
        "home": str(paths.home),
        "supervisor_pid": (state or {}).get("supervisor_pid") if supervisor_alive else None,
        **{key: value for key, value in urls.items()},
        "processes": {},
    }
    if state and supervisor_alive:
        result["read_database_url"] = (state.get("urls") or {}).get("read_database_url")
        result["cluster"] = bool(state.get("cluster"))
        result["brokers"] = state.get("brokers") or {}
    if state:
        if state.get("demo_login"):
            result["demo_login"] = {
                "email": state["demo_login"]["email"],
                "password_file": state["demo_login"]["password_file"],
            }
        for name in state.get("order", []):
            info = state["processes"][name]
            alive = same_process_alive(info.get("pid"), info.get("pid_start_time"))
            recorded = info.get("state", "unknown")
            if not supervisor_alive:
                process_state = "orphaned" if alive else "stopped"
            elif recorded == "running" and not alive:
                process_state = "exited"  # died since the supervisor last looked
            else:
                process_state = recorded
            result["processes"][name] = {
                "state": process_state,
                "pid": info.get("pid") if alive else None,
                "restarts": info.get("restarts", 0),
                "last_exit": info.get("last_exit"),
                "log": info.get("log"),
            }
        for name, reason in (state.get("unavailable") or {}).items():
            result["processes"][name] = {"state": "unavailable", "reason": reason}
    return result


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"fieldhub stack under {status['home']}: "
        + (f"running (supervisor pid {status['supervisor_pid']})" if status["running"] else "down"),
        f"  web:      {status['web_url']}",
        f"  devices:  {status['mqtt_device_url']}",
        f"  services: {status['mqtt_url']}",
        f"  database: {status['database_url']}",
    ]
    brokers = status.get("brokers") or {}
    if len(brokers) > 1:
        lines[2:3] = [
            f"  devices:  {broker['mqtt_device_url']} ({name})" for name, broker in brokers.items()
        ]
    if status["processes"]:
        lines.append(f"  {'PROCESS':<18} {'STATE':<12} {'PID':>8} {'RESTARTS':>8}")
        for name, info in status["processes"].items():
            pid = info.get("pid") or "-"
            lines.append(
                f"  {name:<18} {info['state']:<12} {pid!s:>8} {info.get('restarts', 0)!s:>8}"
            )
    if any(info["state"] == "orphaned" for info in status["processes"].values()):
        lines.append("  the supervisor is gone but processes remain: `fieldhub down` stops them")
    return "\n".join(lines)


# -- down ---------------------------------------------------------------------------------------
def stop_stack(settings: Settings, *, timeout: float = 120.0) -> str:
    paths = StackPaths(settings.home)
    state = read_state(paths.state_file)
    if state is None:
        message = f"no stack is running under {paths.home}"
    else:
        pid = int(state["supervisor_pid"])
        if stop_recorded(pid, state.get("supervisor_start_time"), signal.SIGTERM, timeout):
            message = f"stopped the stack under {paths.home}"
        else:
            message = f"the supervisor under {paths.home} was not running; cleaned up after it"
    clean_leftovers(paths)
    if settings.database_url is None:
        cluster = local_cluster(settings)
        # A postmaster left by a crashed supervisor (or started by hand) is stopped the
        # documented way.
        if cluster.initialised and cluster.running():
            cluster.stop("fast")
    return message


def clean_leftovers(paths: StackPaths) -> None:
    """Stop processes recorded by a supervisor that is gone (killed, machine crash)."""
    state = read_state(paths.state_file)
    if state is None:
        return
    if same_process_alive(state.get("supervisor_pid"), state.get("supervisor_start_time")):
        return
    for name in reversed(state.get("order", [])):
        info = state["processes"][name]
        if info.get("pid") and stop_recorded(
            int(info["pid"]),
            info.get("pid_start_time"),
            int(info.get("stop_signal", signal.SIGTERM)),
            30,
        ):
            log.warning(
                "stopped %s (pid %s), left behind by a previous supervisor", name, info["pid"]
            )
    with contextlib.suppress(FileNotFoundError):
        paths.state_file.unlink()


__all__ = [
    "StackError",
    "StackPaths",
    "banner",
    "detach_up",
    "format_status",
    "run_up",
    "service_specs",
    "stack_status",
    "stop_stack",
]
