"""fieldhub laid out over the hosts of a netlab lab as on real hosts: each host's directory
stands for its `/`, so the deploy guide's paths (docs/deploy.md) work inside it, each host has
its /etc/fieldhub/fieldhub.env, and every fieldhub role runs exactly as its unit in
deploy/systemd/ says (ExecStart, environment files, Environment=, User=, Group=, state and
runtime directories; fieldhub/bench/units.py reads them), from the wheel installed without
extras. Readiness is probed from inside the hosts (/readyz), and the simulated devices' ledger
is counted against what was stored.

Used by `fieldhub bench hosts` (fieldhub/bench/hosts.py), which adds the load, the user and the
steps; failure scenarios on other hosts build on the same pieces: `FieldhubHosts.kill(host)`
(every process, SIGKILL), `start_host(host)` to bring its roles back, `link(host, up=...)` and
`partitioned(group, group, ...)` (fieldhub/bench/netlab.py does the work)."""

from __future__ import annotations

import contextlib
import dataclasses
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench import units
from fieldhub.bench.netlab import Lab, LabError, LabProcess, require_lab_netns
from fieldhub.core import registry, users
from fieldhub.core.config import (
    PROJECT_ROOT,
    Role,
    Settings,
    bridge_metrics_port,
    parse_env_file,
    split_bridge_name,
)
from fieldhub.core.db import Conn, Queries, connect
from fieldhub.core.procs import chown, chown_tree, tail, wait_until
from fieldhub.core.tls import ensure_tls
from fieldhub.sim.broker_walk import WalkPolicy
from fieldhub.stack.postgres import PostgresCluster, pg_bindir

QUERIES = Queries(Path(__file__).with_name("hosts_lab.sql"))
USER_EMAIL = "watcher@load.example"
LOAD_LIKE = plan.LOAD_PREFIX + "-%"
SAMPLE_EVERY_S = 1.0
START_TIMEOUT_S = 120.0

T = TypeVar("T")


# -- probes, run inside a host (Lab.call) ------------------------------------------------------
def tcp_open(address: str, port: int) -> bool:
    require_lab_netns()
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def http_status(url: str, context: ssl.SSLContext | None = None) -> int | None:
    require_lab_netns()
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def ensure_system_user(name: str, home: str) -> None:
    """The deploy guide's `adduser --system --group` for the account fieldhub's units run as
    (the lab's hosts share the machine's users)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["adduser", "--system", "--group", "--home", home, "--no-create-home", name],
            capture_output=True,
            check=True,
        )


# -- fieldhub on a lab ------------------------------------------------------------------------
class FieldhubHosts:
    """fieldhub laid out over a lab's hosts as hosts_plan says, every fieldhub role run from the
    install in `venv` as its unit says, each host's `/` at workdir/hosts/NAME."""

    def __init__(
        self,
        lab: Lab,
        venv: Path,
        workdir: Path,
        hosts: tuple[plan.HostPlan, ...],
        progress: Callable[[str], None],
        values: Mapping[str, str] | None = None,
        deploy_dir: Path = PROJECT_ROOT / "deploy",
    ) -> None:
        self.lab = lab
        self.venv = venv
        self.workdir = workdir
        self.progress = progress
        self.deploy_dir = deploy_dir
        if not (deploy_dir / "systemd").is_dir():
            raise LabError(f"{deploy_dir}/systemd is missing: the units are what the hosts run")
        # What COMMANDS are filled in with, besides the machine's PostgreSQL.
        self.values = {
            "pg_bindir": str(pg_bindir()),
            "home_after": f"{WalkPolicy.home_stable_s:g}",
            **(values or {}),
        }
        self.plans = {host.name: host for host in hosts}
        self.secrets = plan.Secrets(
            database_password=secrets.token_urlsafe(24),
            bridge_password=secrets.token_urlsafe(24),
            web_secret_key=secrets.token_urlsafe(48),
        )
        ensure_system_user("fieldhub", plan.STATE_DIR)
        for name in self.plans:
            lab.add_host(name)
        self.addresses = {name: lab.host(name).address for name in self.plans}
        for name, host in self.plans.items():
            root = self.root(name)
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o755)  # the postgres, mosquitto, fieldhub and www-data users enter it
            env_file = self.path(name, plan.ENV_FILE)
            env_file.parent.mkdir(parents=True, exist_ok=True)
            # As the guide installs it: root's, readable by the fieldhub group only.
            env_file.write_text(
                plan.render_env_file(plan.host_env(host, self.addresses, self.secrets))
            )
            env_file.chmod(0o640)
            chown(env_file, "root", group="fieldhub")
        self.running: dict[str, list[tuple[Role, LabProcess]]] = {}
        self._db: Conn | None = None
        self.ca_dir = workdir / "ca"

    # -- a host's files ----------------------------------------------------------------------------
    def root(self, host: str) -> Path:
        """The directory that stands for the host's `/`."""
        return self.workdir / "hosts" / host

    def paths(self, host: str) -> units.HostPaths:
        return units.HostPaths(str(self.root(host)), plan.INSTALL_PREFIX, str(self.venv))

    def path(self, host: str, real: str) -> Path:
        """Where a real host's `real` path is on this lab host."""
        return Path(self.paths(host).map(real))

    def env(self, host: str) -> dict[str, str]:
        """The host's env file as a unit gets it (read the way systemd reads it), its paths
        mapped into the host."""
        text = self.path(host, plan.ENV_FILE).read_text()
        return self.paths(host).environment(parse_env_file(text, plan.ENV_FILE))

    def settings(self, host: str) -> Settings:
        return Settings.from_env(self.env(host))

    def log_path(self, host: str, role: Role) -> Path:
        return self.path(host, "/var/log/lab") / f"{role}.log"

    # -- roles -------------------------------------------------------------------------------
    def unit(self, role: Role) -> units.Service:
        """The role's unit, from deploy/systemd/ (and Debian's own unit it extends)."""
        texts = []
        for name in plan.UNIT_FILES[role.kind]:
            path = Path(name) if name.startswith("/") else self.deploy_dir / "systemd" / name
            if path.exists():
                texts.append(path.read_text())
            elif not name.startswith("/"):
                raise LabError(f"{path} is missing")
        return units.service(plan.unit_name(role), texts)

    def process_of(self, host: str, role: Role) -> tuple[list[str], dict[str, str], Any]:
        """argv, environment and (user, group, cwd) of the role on the host."""
        paths = self.paths(host)
        if role.kind not in plan.UNIT_FILES:
            argv = [paths.map_value(arg) for arg in plan.command(role, self.values)]
            user = plan.COMMAND_USERS.get(role.kind)
            cwd = self.path(host, plan.PG_DIR) / "pgdata" if role.kind == "database" else None
            return argv, self.env(host), (user, None, cwd)
        service = self.unit(role)
        env: dict[str, str] = {}
        if service.user:
            # What systemd gives a unit with User= before its own settings.
            account = pwd.getpwnam(service.user)
            env.update(USER=service.user, LOGNAME=service.user, HOME=account.pw_dir)
        for file, required in service.environment_files:
            mapped = Path(paths.map(file))
            if mapped.exists():
                env.update(paths.environment(parse_env_file(mapped.read_text(), file)))
            elif required:
                raise LabError(f"{service.unit} on {host}: {file} does not exist")
        env.update(paths.environment(dict(service.environment)))
        # What systemd creates for the unit before it starts, owned by its user.
        for directory in (*service.state_directories, *service.runtime_directories):
            made = Path(paths.map(directory))
            made.mkdir(parents=True, exist_ok=True)
            if service.user:
                chown(made, service.user, group=service.group)
        cwd = Path(paths.map(service.working_directory)) if service.working_directory else None
        argv = [paths.map_value(arg) for arg in service.argv]
        return argv, env, (service.user, service.group, cwd)

    def start_host(self, host: str) -> None:
        """Start every role of the host (again), as systemd does at boot; the one-shot
        migrate role is run by prepare_database, not here."""
        for role in self.plans[host].roles:
            if role.kind != "migrate":
                self.start_role(host, role)

    def start_role(self, host: str, role: Role) -> LabProcess:
        argv, env, (user, group, cwd) = self.process_of(host, role)
        process = self.lab.start(
            self.lab.host(host),
            str(role),
            argv,
            env=env,
            log_path=self.log_path(host, role),
            user=user,
            group=group,
            cwd=cwd,
        )
        self.running.setdefault(host, []).append((role, process))
        return process

    def oneshot(self, host: str, role: Role, timeout: float = 300) -> str:
        argv, env, (user, group, _cwd) = self.process_of(host, role)
        lab_host = self.lab.host(host)
        return self.lab.run(lab_host, argv, env=env, timeout=timeout, user=user, group=group).stdout

    def kill(self, host: str) -> int:
        """Every process of the host, SIGKILL; how many there were."""
        self.running.pop(host, None)
        if host == "ops":
            self._db = None
        return self.lab.kill_host(self.lab.host(host))

    def link(self, host: str, *, up: bool) -> None:
        """The host's cable pulled (up=False) or plugged back in; its processes run on."""
        if up:
            self.lab.link_up(self.lab.host(host))
        else:
            self.lab.link_down(self.lab.host(host))

    def partitioned(self, *groups: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """`with hosts.partitioned(["db"], ["bridge-1", "bridge-2"]): ...` cuts the network
        between the groups for the block (hosts in no group stay with the first)."""
        return self.lab.partitioned(*([self.lab.host(name) for name in g] for g in groups))

    def stop_role(self, host: str, kind: str, timeout: float = 60) -> int | None:
        for role, process in list(self.running.get(host, [])):
            if role.kind == kind:
                self.running[host].remove((role, process))
                return self.lab.stop_process(process, timeout)
        raise LabError(f"no {kind} runs on {host}")

    def check_alive(self) -> None:
        """Fail at once, with its log, if a role died (rather than waiting for a timeout)."""
        for host, roles in self.running.items():
            for role, process in roles:
                if not process.alive():
                    raise LabError(
                        f"{role} on {host} exited {process.popen.returncode}; "
                        f"{process.log_path}:\n{tail(process.log_path)}"
                    )

    def wait(
        self, condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S
    ) -> float:
        started = time.monotonic()

        def check() -> bool:
            self.check_alive()
            return condition()

        wait_until(check, timeout=timeout, interval=0.25, what=what)
        return time.monotonic() - started

    def on(self, host: str, fn: Callable[..., T], *args: object) -> T:
        return self.lab.call(self.lab.host(host), fn, *args)

    # -- the database, as the ops host sees it ----------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.env("ops")["DATABASE_URL"]

    def sql(self, fn: Callable[[Conn], T]) -> T:
        """fn(connection) on the ops host's connection to the database (opened there once)."""

        def run() -> T:
            require_lab_netns()
            if self._db is None or self._db.closed:
                self._db = connect(self.database_url, autocommit=True, application_name="bench")
            try:
                return fn(self._db)
            except psycopg.OperationalError:
                self._db.close()
                raise

        return self.on("ops", run)

    def count(self, query: str, **params: object) -> int:
        row = self.sql(lambda conn: conn.execute(QUERIES[query], params).fetchone())
        return int(row["n"]) if row else 0

    # -- bringing each tier up -------------------------------------------------------------------
    def tls_for(self, host: str, directory: str) -> Path:
        """A server certificate for the host's address in its `directory` (ca.crt,
        server.crt, server.key), signed by the lab's own CA (the operator's PKI, as the guide's
        `fieldhub tls ensure --dir` makes it); the host gets the CA certificate, never its key."""
        if not (self.ca_dir / "ca.crt").exists():
            ensure_tls(self.ca_dir, ["fieldhub-lab-ca"])
        tls_dir = self.path(host, directory)
        tls_dir.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "ca.key"):
            shutil.copy2(self.ca_dir / name, tls_dir / name)
        ensure_tls(tls_dir, [self.addresses[host]])
        (tls_dir / "ca.key").unlink()
        (tls_dir / "ca.srl").unlink(missing_ok=True)
        return tls_dir

    def start_database(self) -> None:
        """PostgreSQL + TimescaleDB as the guide sets it up: deploy/postgresql/fieldhub.conf
        (memory scaled to the lab), TLS, password logins over TLS from the lab's network only,
        and a `fieldhub` role that is no superuser and owns the database."""
        db_dir = self.path("db", plan.PG_DIR)
        superuser_password = self.workdir / "secrets" / "postgres.password"
        superuser_password.parent.mkdir(parents=True, exist_ok=True)
        superuser_password.parent.chmod(0o700)
        superuser_password.write_text(secrets.token_urlsafe(24) + "\n")
        superuser_password.chmod(0o600)
        ssl_dir = self.tls_for("db", f"{plan.PG_CONF_DIR}/ssl")
        archive = self.path("db", "/var/backups/fieldhub/wal")
        archive.mkdir(parents=True, exist_ok=True)
        conf = plan.postgresql_settings(
            (self.deploy_dir / "postgresql" / "fieldhub.conf").read_text(), self.paths("db")
        )
        cluster = PostgresCluster(
            db_dir,
            plan.PG_PORT,
            superuser_password,
            host=self.addresses["db"],
            superuser="postgres",
            hba_rules=(f"hostssl fieldhub fieldhub {plan.SUBNET} scram-sha-256",),
            extra_settings={
                **conf,
                "ssl_cert_file": f"'{ssl_dir / 'server.crt'}'",
                "ssl_key_file": f"'{ssl_dir / 'server.key'}'",
            },
        )
        db_dir.parent.mkdir(parents=True, exist_ok=True)
        cluster.init()
        for path in (ssl_dir, archive.parent):
            chown_tree(path, "postgres")
        self.start_host("db")
        self.wait(lambda: self.on("ops", tcp_open, self.addresses["db"], plan.PG_PORT), "db")
        # What the guide does once with `sudo -u postgres psql`.
        password = self.secrets.database_password
        self._psql("postgres", f"CREATE ROLE fieldhub LOGIN PASSWORD '{password}'")
        self._psql("postgres", "CREATE DATABASE fieldhub OWNER fieldhub")
        self._psql("fieldhub", "CREATE EXTENSION IF NOT EXISTS timescaledb")

    def _psql(self, database: str, sql: str) -> None:
        socket_dir = self.path("db", plan.PG_DIR) / "socket"
        argv = [
            str(pg_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(socket_dir), "-p", str(plan.PG_PORT), "-d", database, "-c", sql,
        ]  # fmt: skip
        self.lab.run(self.lab.host("db"), argv, env={}, timeout=60, user="postgres")

    def prepare_database(self) -> None:
        """As the operator, from ops: the migrations (fieldhub-migrate.service), the bridge
        instances' broker accounts, the load organisation, the watching user and its token."""
        self.progress(self.oneshot("ops", Role("migrate")).strip())
        password = secrets.token_urlsafe(18)

        def accounts(conn: Conn) -> str:
            # `fieldhub service-account bridges --instances 2`: svc.bridge-1 and -2.
            registry.ensure_bridge_accounts(
                conn, self.secrets.bridge_password, len(plan.BRIDGE_HOSTS), base=plan.BRIDGE_ACCOUNT
            )
            registry.create_org(conn, plan.LOAD_ORG)
            users.create_user(conn, USER_EMAIL, org=plan.LOAD_ORG, role="member", password=password)
            issued, _row = users.create_api_token(conn, USER_EMAIL, name="bench hosts")
            return issued

        token = self.sql(accounts)
        for name, value in (("user.password", password), ("user.token", token)):
            path = self.root("ops") / name
            path.write_text(value + "\n")
            path.chmod(0o600)

    def start_broker(self, host: str) -> None:
        """As the guide: the broker's certificate in /etc/fieldhub/tls, `fieldhub broker-config`
        as root, then mosquitto.service (with fieldhub's drop-in) and the broker's auth-sync."""
        self.tls_for(host, plan.TLS_DIR)
        argv = [
            str(self.venv / "bin" / "fieldhub"), "broker-config",
            "--services-bind", self.addresses[host],
            "--tls-dir", str(self.path(host, plan.TLS_DIR)),
        ]  # fmt: skip
        env = {**self.env(host), "FIELDHUB_MOSQUITTO_DIR": str(self.path(host, plan.BROKER_DIR))}
        self.lab.run(self.lab.host(host), argv, env=env, timeout=60)
        self.start_host(host)
        address = self.addresses[host]
        self.wait(
            lambda: (
                self.on("ops", tcp_open, address, plan.MQTTS_PORT)
                and self.on("ops", tcp_open, address, plan.MQTT_SERVICE_PORT)
            ),
            f"{host}'s listeners",
        )

    def wait_bridges(self, host: str) -> float:
        settings = self.settings(host)
        ports = []
        for role in self.plans[host].roles:
            broker, instance = split_bridge_name(role.instance)
            ports.append(bridge_metrics_port(settings, broker, instance))
        return self.wait(
            lambda: all(
                self.on(host, http_status, f"http://127.0.0.1:{port}/readyz") == 200
                for port in ports
            ),
            f"{host}'s bridges to be ready",
        )

    def wait_worker(self, host: str = "worker") -> float:
        url = f"http://127.0.0.1:{self.settings(host).ports.worker_metrics}/readyz"
        return self.wait(lambda: self.on(host, http_status, url) == 200, f"{host} to be ready")

    def wait_web(self, host: str) -> float:
        url = f"http://{self.addresses[host]}:{plan.WEB_PORT}/readyz"
        return self.wait(lambda: self.on("ops", http_status, url) == 200, f"{host} to be ready")

    def start_nginx(self) -> None:
        """As the guide: deploy/nginx/fieldhub.conf as the site, with the lab's web hosts, its
        network and its certificate filled in, under a main nginx.conf as Debian's."""
        tls_dir = self.tls_for("nginx", "/etc/ssl/fieldhub")
        shutil.copy2(tls_dir / "server.crt", self.path("nginx", plan.NGINX_CERTIFICATE))
        shutil.copy2(tls_dir / "server.key", self.path("nginx", plan.NGINX_KEY))
        site = plan.nginx_site(
            (self.deploy_dir / "nginx" / "fieldhub.conf").read_text(),
            [f"{self.addresses[web]}:{plan.WEB_PORT}" for web in plan.WEB_HOSTS],
            self.paths("nginx"),
        )
        nginx_dir = self.path("nginx", plan.NGINX_DIR)
        (nginx_dir / "sites-enabled").mkdir(parents=True, exist_ok=True)
        (nginx_dir / "sites-enabled" / "fieldhub").write_text(site)
        shutil.copy2("/etc/nginx/mime.types", nginx_dir / "mime.types")
        (nginx_dir / "nginx.conf").write_text(plan.nginx_main_conf(self.paths("nginx")))
        for directory in ("/var/lib/nginx", "/var/log/nginx", "/run"):
            self.path("nginx", directory).mkdir(parents=True, exist_ok=True)
        chown_tree(self.path("nginx", "/var/lib/nginx"), "www-data")
        self.start_host("nginx")
        login = self.base_url + "login"
        self.wait(
            lambda: self.on("ops", http_status, login, self.client_tls) == 200,
            "nginx to serve the login page",
        )

    @property
    def base_url(self) -> str:
        return f"https://{self.addresses['nginx']}/"

    @property
    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_dir / "ca.crt"))


# -- what the run observes ------------------------------------------------------------------------
class LedgerReader:
    """The simulator's ledgers, read as they grow (complete lines only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.entries: list[tuple[str, int, int]] = []
        self.brokers: list[str] = []  # beside entries: the broker that acknowledged each
        self._offsets: dict[Path, int] = {}

    def poll(self) -> int:
        for path in sorted(self.directory.glob("*.ledger")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            end = chunk.rfind(b"\n") + 1
            if end:
                for device, seq, ts, broker in plan.parse_ledger_brokers(chunk[:end].decode()):
                    self.entries.append((device, seq, ts))
                    self.brokers.append(broker)
                self._offsets[path] = offset + end
        return len(self.entries)

    def acked_until(self, ts_ms: int) -> int:
        return sum(1 for _, _, ts in self.entries if ts <= ts_ms)

    def newest_ts(self) -> int:
        return max((ts for _, _, ts in self.entries), default=0)


@dataclasses.dataclass(frozen=True)
class Sample:
    t: float
    acked: int
    stored: int


class Sampler:
    """Published (acknowledged) and stored counts every SAMPLE_EVERY_S, in a thread."""

    def __init__(self, hosts: FieldhubHosts, ledger: LedgerReader) -> None:
        self.hosts = hosts
        self.ledger = ledger
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.take()

    def take(self) -> Sample | None:
        with self._lock:
            t = time.time()
            try:
                stored = self.hosts.count("stored_messages", like=LOAD_LIKE)
            except (psycopg.Error, LabError, TimeoutError):
                self.errors += 1
                return None
            sample = Sample(t, self.ledger.poll(), stored)
            self.samples.append(sample)
            return sample

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [s for s in self.samples if start <= s.t <= end]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        seconds = last.t - first.t
        return {
            "published": last.acked - first.acked,
            "stored": last.stored - first.stored,
            "published_per_s": round((last.acked - first.acked) / seconds, 1),
            "stored_per_s": round((last.stored - first.stored) / seconds, 1),
        }
