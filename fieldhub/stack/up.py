"""`fieldhub up`: the local stack, brought up and supervised in this process or as a daemon.

`up` brings the pieces up in dependency order, each one ready before the next starts:
PostgreSQL (a supervised `postgres` child, run as the `postgres` user when we are root) ->
database + migrations + the bridge's broker account -> Mosquitto -> a first registry sync ->
the fieldhub processes (auth-sync, bridge, worker, web, and the simulator with --demo), a
fixed list. With DATABASE_URL / MQTT_URL set, the matching local server is not started.

Everything runs under one `Supervisor`; its state file is what `status` and `down` read."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from types import FrameType

import psycopg

from fieldhub.broker.auth_sync import sync_once
from fieldhub.core import endpoints, procs, registry
from fieldhub.core.config import Settings
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.tls import ensure_tls
from fieldhub.stack import cluster as cluster_mod
from fieldhub.stack.down import clean_leftovers
from fieldhub.stack.postgres import local_cluster
from fieldhub.stack.preflight import (
    StackError,
    StackPaths,
    check_home,
    check_ports_free,
    running_state,
)
from fieldhub.stack.probes import http_answers
from fieldhub.stack.specs import (
    bridge_instances,
    fieldhub_argv,
    local_brokers,
    mosquitto_spec,
    postgres_spec,
    service_specs,
    with_cluster_brokers,
)
from fieldhub.stack.status import banner
from fieldhub.stack.supervisor import StartupError, Supervisor, read_state

log = logging.getLogger("fieldhub.stack")


DETACH_TIMEOUT_S = 300.0
# Children inherit the open-file limit: a broker or simulator with 10,000 clients, plus the
# servers' own descriptors.
OPEN_FILES_NEEDED = 16_384


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
    procs.raise_open_file_limit(OPEN_FILES_NEEDED)

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
                (f"MQTT certificate devices, {name}", broker_ports.devices_cert),
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
        supervisor.start(
            postgres_spec(replica, "postgres-replica", cluster_mod.replica_ready(replica))
        )
        read_database_url = cluster_mod.replica_url(settings)
    # One account per bridge instance (its durable session is named after it), the same on
    # every broker: each broker's auth-sync renders every service account.
    bridge_base, bridge_password = endpoints.bridge_credentials(settings)
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        if bridge_password:
            registry.ensure_bridge_accounts(
                conn, bridge_password, bridge_instances(cluster), base=bridge_base
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
                if sync_once(
                    conn,
                    broker.auth_dir,
                    broker=name,
                    operator_dir=settings.acl_dir,
                    tls_dir=settings.tls_dir,
                ):
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
                + procs.tail(paths.detach_log, 30)
            )
        if time.monotonic() > deadline:
            return 1, (
                f"the stack is still not up after {DETACH_TIMEOUT_S:.0f} s (pid {proc.pid}); "
                f"see {paths.detach_log}"
            )
        time.sleep(0.1)
