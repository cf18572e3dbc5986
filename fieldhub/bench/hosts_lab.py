"""fieldhub laid out over the hosts of a netlab lab: each host's env file and data directory,
its roles started from the installed wheel as its units would start them, readiness probes run
from inside the hosts, and the counts of what the simulated devices published (their ledger)
against what was stored.

Used by `fieldhub bench hosts` (fieldhub/bench/hosts.py), which adds the load, the user and the
steps; failure scenarios on other hosts build on the same pieces: `FieldhubHosts.kill(host)`
(every process, SIGKILL), `start_host(host)` to bring its roles back, `link(host, up=...)` and
`partitioned(group, group, ...)` (fieldhub/bench/netlab.py does the work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench.netlab import Lab, LabError, LabProcess, require_lab_netns, tail
from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core import registry, users
from fieldhub.core.db import Queries, connect
from fieldhub.core.procs import chown_tree, require_binary, wait_until
from fieldhub.core.tls import ensure_tls
from fieldhub.stack.cluster import render_nginx_conf
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


def bridge_ready(port: int) -> bool:
    require_lab_netns()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - a lab host's URL
            text = response.read().decode()
    except OSError:
        return False
    return any(
        line.startswith("fieldhub_bridge_ready") and line.rsplit(" ", 1)[-1] == "1.0"
        for line in text.splitlines()
    )


def _select_one(url: str) -> None:
    require_lab_netns()
    with connect(url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")


# -- fieldhub on a lab ------------------------------------------------------------------------
class FieldhubHosts:
    """fieldhub laid out over a lab's hosts as hosts_plan says, every role from the install
    in `venv`, each host with its env file and data directory under workdir/hosts/NAME."""

    def __init__(
        self,
        lab: Lab,
        venv: Path,
        workdir: Path,
        hosts: tuple[plan.HostPlan, ...],
        progress: Callable[[str], None],
    ) -> None:
        self.lab = lab
        self.venv = venv
        self.workdir = workdir
        self.progress = progress
        self.plans = {host.name: host for host in hosts}
        self.secrets = plan.Secrets(
            database_password=secrets.token_urlsafe(24),
            bridge_password=secrets.token_urlsafe(24),
            web_secret_key=secrets.token_urlsafe(48),
        )
        for name in self.plans:
            lab.add_host(name)
        self.addresses = {name: lab.host(name).address for name in self.plans}
        for name in self.plans:
            home = self.home(name)
            home.mkdir(parents=True, exist_ok=True)
            home.chmod(0o755)
            env = plan.host_env(name, self.addresses, self.secrets, str(home))
            self.env_file(name).write_text(plan.render_env_file(env))
            self.env_file(name).chmod(0o600)
        self.running: dict[str, list[tuple[plan.Role, LabProcess]]] = {}
        self._db: psycopg.Connection[Any] | None = None
        self.ca_dir = workdir / "ca"

    # -- files -------------------------------------------------------------------------------
    def home(self, host: str) -> Path:
        return self.workdir / "hosts" / host

    def env_file(self, host: str) -> Path:
        return self.home(host) / "fieldhub.env"

    def env(self, host: str) -> dict[str, str]:
        """What the host's units get: its env file, read the way systemd reads it."""
        return plan.parse_env_file(self.env_file(host).read_text())

    def log_path(self, host: str, role: plan.Role) -> Path:
        return self.home(host) / "log" / f"{role.unit}.log"

    def values(self, host: str) -> dict[str, str]:
        return {
            "venv": str(self.venv),
            "home": str(self.home(host)),
            "address": self.addresses[host],
            "pg_bindir": str(pg_bindir()),
            "mosquitto": require_binary("mosquitto", "/usr/sbin/mosquitto"),
            "nginx": require_binary("nginx", "/usr/sbin/nginx"),
        }

    # -- roles -------------------------------------------------------------------------------
    def start_host(self, host: str) -> None:
        """Start every role of the host (again), as systemd does at boot."""
        for role in self.plans[host].roles:
            self.start_role(host, role)

    def start_role(self, host: str, role: plan.Role) -> LabProcess:
        cwd = self.home(host) / "postgres" / "pgdata" if role.name == "postgres" else None
        process = self.lab.start(
            self.lab.host(host),
            role.unit,
            role.command(self.values(host)),
            env=self.env(host),
            log_path=self.log_path(host, role),
            user=plan.ROLE_USERS.get(role.name),
            cwd=cwd,
        )
        self.running.setdefault(host, []).append((role, process))
        return process

    def oneshot(self, host: str, role: plan.Role, timeout: float = 300) -> str:
        argv = role.command(self.values(host))
        return self.lab.run(self.lab.host(host), argv, env=self.env(host), timeout=timeout).stdout

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

    def stop_role(self, host: str, role_name: str, timeout: float = 60) -> int | None:
        for role, process in list(self.running.get(host, [])):
            if role.name == role_name:
                self.running[host].remove((role, process))
                return self.lab.stop_process(process, timeout)
        raise LabError(f"{role_name} is not running on {host}")

    def check_alive(self) -> None:
        """Fail at once, with its log, if a role died (rather than waiting for a timeout)."""
        for host, roles in self.running.items():
            for role, process in roles:
                if not process.alive():
                    raise LabError(
                        f"{role.unit} on {host} exited {process.popen.returncode}; "
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

    def sql(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
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
    def tls_for(self, host: str, subdir: str = "tls") -> Path:
        """A server certificate for the host's address, signed by the lab's own CA (the
        operator's PKI); the host keeps the CA certificate, never its key."""
        if not (self.ca_dir / "ca.crt").exists():
            ensure_tls(self.ca_dir, ["fieldhub-lab-ca"])
        tls_dir = self.home(host) / subdir
        tls_dir.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "ca.key"):
            shutil.copy2(self.ca_dir / name, tls_dir / name)
        ensure_tls(tls_dir, [self.addresses[host]])
        (tls_dir / "ca.key").unlink()
        (tls_dir / "ca.srl").unlink(missing_ok=True)
        return tls_dir

    def start_database(self) -> None:
        home = self.home("db")
        password_file = home / "secrets" / "postgres.password"
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(self.secrets.database_password + "\n")
        password_file.chmod(0o600)
        cluster = PostgresCluster(
            home / "postgres",
            plan.PG_PORT,
            password_file,
            host=self.addresses["db"],
            client_networks=(plan.SUBNET,),
        )
        cluster.init()
        self.start_host("db")
        self.wait(lambda: self.on("ops", tcp_open, self.addresses["db"], plan.PG_PORT), "db")
        # What the operator does once with psql: the application's database.
        self.wait(self._server_answers, "PostgreSQL to accept logins")
        self.on("ops", cluster.create_database, "fieldhub")

    def _server_answers(self) -> bool:
        try:
            self.on("ops", _select_one, self.database_url.rsplit("/", 1)[0] + "/postgres")
        except psycopg.OperationalError:
            return False
        return True

    def prepare_database(self) -> None:
        """As the operator, from ops: migrations (the installed `fieldhub migrate`), the
        bridges' broker account, the load organisation, the watching user and its token."""
        self.progress(self.oneshot("ops", plan.Role("migrate")).strip())
        password = secrets.token_urlsafe(18)

        def accounts(conn: psycopg.Connection[Any]) -> str:
            registry.ensure_service_account(
                conn, plan.BRIDGE_ACCOUNT, registry.BRIDGE_ACL, self.secrets.bridge_password
            )
            registry.create_org(conn, plan.LOAD_ORG)
            users.create_user(conn, USER_EMAIL, org=plan.LOAD_ORG, role="member", password=password)
            issued, _row = users.create_api_token(conn, USER_EMAIL, name="bench hosts")
            return issued

        token = self.sql(accounts)
        for name, value in (("user.password", password), ("user.token", token)):
            path = self.home("ops") / name
            path.write_text(value + "\n")
            path.chmod(0o600)

    def start_broker(self, host: str) -> None:
        home = self.home(host)
        broker = MosquittoBroker(
            home / "mosquitto",
            self.tls_for(host),
            plan.MQTT_LOOPBACK_PORT,
            plan.MQTTS_PORT,
            plan.MQTT_SERVICE_PORT,
            bind="127.0.0.1",
            tls_bind=self.addresses[host],
            services_bind=self.addresses[host],
        )
        broker.render()
        (home / "acl.d").mkdir(exist_ok=True)
        self.start_host(host)
        address = self.addresses[host]
        self.wait(
            lambda: self.on("ops", tcp_open, address, plan.MQTTS_PORT)
            and self.on("ops", tcp_open, address, plan.MQTT_SERVICE_PORT),
            f"{host}'s listeners",
        )

    def wait_bridges(self, host: str) -> float:
        ports = [int(dict(role.params)["metrics_port"]) for role in self.plans[host].roles]
        return self.wait(
            lambda: all(self.on(host, bridge_ready, port) for port in ports),
            f"{host}'s bridges to subscribe",
        )

    def wait_web(self, host: str) -> float:
        url = f"http://{self.addresses[host]}:{plan.WEB_PORT}/login"
        return self.wait(lambda: self.on("ops", http_status, url) == 200, f"{host} to answer")

    def start_nginx(self) -> None:
        home = self.home("nginx")
        tls_dir = self.tls_for("nginx")
        render_nginx_conf(
            home / "nginx",
            home / "log",
            f"{self.addresses['nginx']}:{plan.HTTPS_PORT}",
            [f"{self.addresses[web]}:{plan.WEB_PORT}" for web in plan.WEB_HOSTS],
            tls=(tls_dir / "server.crt", tls_dir / "server.key"),
        )
        chown_tree(home / "nginx", "www-data")
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
        self._offsets: dict[Path, int] = {}

    def poll(self) -> int:
        for path in sorted(self.directory.glob("*.ledger")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            end = chunk.rfind(b"\n") + 1
            if end:
                self.entries += plan.parse_ledger(chunk[:end].decode())
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
