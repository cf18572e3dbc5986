"""`fieldhub up --cluster`: the one-machine stack with every tier doubled where this build can.

On top of the single stack: a second Mosquitto broker (devices are homed on one of the two by
their id, each broker has its own auth-sync), a streaming replica of PostgreSQL that the web
app reads from (READ_DATABASE_URL), two bridge instances splitting each broker's shared
subscription (one bridge process per instance and broker), two gunicorn instances and nginx in
front of them on the web port. It is the same supervisor with more process specs.

Ports: the replica listens on FIELDHUB_PG_PORT + 1, the web instances on FIELDHUB_WEB_PORT + 1
and + 2 (nginx takes FIELDHUB_WEB_PORT itself), bridge N serves metrics on
FIELDHUB_BRIDGE_METRICS_PORT + N - 1 for broker-1 and + 2 + N - 1 for broker-2; broker-2
listens on each of broker-1's MQTT ports + 1000."""

from __future__ import annotations

import os
import string
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psycopg

from fieldhub.core.config import Settings
from fieldhub.core.endpoints import LOCAL_DB_NAME, LOCAL_DB_SUPERUSER, local_db_password_file
from fieldhub.core.procs import as_user, chown_tree, require_binary, run_checked, running_as_root
from fieldhub.stack.postgres import PG_USER, PostgresCluster, pg_bindir
from fieldhub.stack.supervisor import ProcessSpec

NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf.template")
BRIDGES = 2
BROKERS = 2  # local Mosquitto brokers, broker-N on each broker-1 port + 1000 * (N - 1)
WEB_INSTANCES = 2
NGINX_USER = "www-data"  # nginx's workers drop to this user when the master runs as root
# The addresses nginx connects to the web instances from (upstreams on 127.0.0.1): the web
# instances trust its X-Forwarded-For (fieldhub.web.proxies).
NGINX_PEERS = ("127.0.0.1/32", "::1/128")


def replica_port(settings: Settings) -> int:
    return settings.ports.postgres + 1


def web_instance_ports(settings: Settings) -> list[int]:
    return [settings.ports.web + n for n in range(1, WEB_INSTANCES + 1)]


def replica_cluster(settings: Settings) -> PostgresCluster:
    """The replica as a cluster object: same superuser and password as the primary."""
    return PostgresCluster(
        settings.home / "postgres-replica",
        replica_port(settings),
        local_db_password_file(settings),
    )


def init_replica(primary: PostgresCluster, replica: PostgresCluster) -> bool:
    """Clone the running primary into the replica's data directory once (pg_basebackup -R);
    True if it was created now. Later starts reuse it and catch up from the primary."""
    if replica.initialised:
        return False
    replica.data_dir.mkdir(parents=True, exist_ok=True)
    replica.data_dir.chmod(0o700)
    chown_tree(replica.data_dir, PG_USER)
    # Without a replication slot the primary keeps this much WAL for a replica that lags or
    # was down for a while; a slot would keep WAL forever for a replica nobody runs anymore.
    with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_keep_size = '2GB'")
        conn.execute("SELECT pg_reload_conf()")
    run_checked(
        as_user(
            PG_USER,
            [
                str(pg_bindir() / "pg_basebackup"),
                "--pgdata",
                str(replica.pgdata),
                "--host",
                primary.host,
                "--port",
                str(primary.port),
                "--username",
                LOCAL_DB_SUPERUSER,
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-password",
            ],
        ),
        env={**os.environ, "PGPASSWORD": primary.password},
    )
    # The copy carries the primary's port; the last setting in the file wins.
    with (replica.pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"# fieldhub replica\nport = {replica.port}\nhot_standby = on\n")
    return True


def replica_ready(replica: PostgresCluster) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with psycopg.connect(replica.url("postgres"), connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row and row[0])
        except psycopg.OperationalError:
            return False

    return probe


def replica_url(settings: Settings) -> str:
    replica = replica_cluster(settings)
    password = quote(replica.password, safe="")
    return f"postgresql://{LOCAL_DB_SUPERUSER}:{password}@127.0.0.1:{replica.port}/{LOCAL_DB_NAME}"


def render_nginx(settings: Settings, upstream_ports: list[int]) -> Path:
    run_dir = settings.home / "nginx"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    host = settings.web_host or "127.0.0.1"
    listen = f"[{host}]:{settings.ports.web}" if ":" in host else f"{host}:{settings.ports.web}"
    values = {
        "user_line": f"user {NGINX_USER};" if running_as_root() else "",
        "run_dir": str(run_dir),
        "log_dir": str(settings.log_dir),
        "listen": listen,
        "upstream_servers": "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
            for port in upstream_ports
        ),
    }
    conf = run_dir / "nginx.conf"
    conf.write_text(string.Template(NGINX_TEMPLATE.read_text()).substitute(values))
    return conf


def nginx_spec(settings: Settings, conf: Path, ready: Callable[[], bool]) -> ProcessSpec:
    nginx = require_binary("nginx", "/usr/sbin/nginx")
    return ProcessSpec(
        name="nginx",
        argv=(nginx, "-c", str(conf), "-e", "stderr"),
        ready=ready,
        ready_timeout=30,
        stop_signal=3,  # SIGQUIT: graceful shutdown, open requests finish
        stop_timeout=20,
    )
