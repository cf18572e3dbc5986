"""Configuration: every environment variable fieldhub reads is read here, and only here.

Each process builds one `Settings` with `Settings.from_env()` and passes it (or the pieces it
needs) down; nothing else calls `os.environ`. In development the defaults describe the
project-local stack that `fieldhub up` starts under `$FIELDHUB_HOME` (default `./var`). In
production (`FIELDHUB_ENV=production`) every secret must be given explicitly: a missing one is
a startup error, never a silent default.

VARIABLES below declares every variable with its meaning and an example, in the order
deploy/fieldhub.env.example lists them; that file is rendered from it (`python -m
fieldhub.core.config > deploy/fieldhub.env.example`) and a test fails when they differ or when
this module reads a variable VARIABLES does not declare. FIELDHUB_ENV_FILE names a file in
systemd's EnvironmentFile syntax whose values fill in what the environment leaves unset, so
an operator's shell on a host sees what the host's services see (/etc/profile.d/fieldhub.sh
sets it)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

# The source checkout this package runs from. Only the development default of FIELDHUB_HOME
# (`./var` of the checkout) is derived from it; an installed package finds its own files next
# to its modules, and its FIELDHUB_HOME defaults to the systemd units' state directory.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTALLED_HOME = Path("/var/lib/fieldhub")
# The most streaming exports one user may run at once (each holds a database connection).
MAX_EXPORTS_PER_USER = 16


def default_home() -> Path:
    if (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "fieldhub").is_dir():
        return PROJECT_ROOT / "var"
    return INSTALLED_HOME


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """Ports of the project-local stack (development defaults, all overridable)."""

    postgres: int = 15432
    mqtt_devices: int = 11883  # plain MQTT for devices, loopback only
    mqtt_devices_tls: int = 18883  # TLS for devices in the field
    mqtt_devices_cert: int = 18884  # TLS for devices with a client certificate
    mqtt_services: int = 11884  # the backend's own service accounts, loopback only
    web: int = 8000
    # Prometheus metrics and health (/healthz, /readyz) of each process kind; instance N of a
    # kind on one host takes its port + N - 1 (the bridge: see bridge_metrics_port()).
    bridge_metrics: int = 9108
    web_metrics: int = 9120
    worker_metrics: int = 9130


@dataclasses.dataclass(frozen=True)
class Settings:
    env: str
    home: Path
    ports: Ports
    # Where the backend finds its servers. Unset means "the local stack under home".
    database_url: str | None
    read_database_url: str | None
    mqtt_url: str | None
    mqtt_device_url: str | None
    secret_key: str | None
    web_host: str
    log_level: str
    # Broker integration: where the registry sync writes the broker's auth files and how it
    # tells the broker to reload them.
    mosquitto_dir: Path
    mosquitto_pid_file: Path
    # Operators' extra ACL files (*.acl), merged by the auth sync into what it renders.
    acl_dir: Path
    # Several brokers (docs/scaling.md): (name, device URL) in FIELDHUB_BROKERS order, the
    # bridge's service-listener URL per broker (no credentials: those come from MQTT_URL or
    # the local secret), and how many brokers a local stack runs when FIELDHUB_BROKERS is unset.
    brokers: tuple[tuple[str, str], ...] = ()
    broker_service_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    local_brokers: int = 1
    # Reverse proxies in front of the web app whose X-Forwarded-For is believed (none: the
    # direct peer is the client). fieldhub.web.proxies applies it.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Retention horizons of the analysis worker, in days; 0 keeps the data forever.
    retention_raw_days: int = 30
    retention_rollup_1m_days: int = 365
    retention_rollup_1h_days: int = 0
    retention_dead_letters_days: int = 14
    # Networks webhooks may reach although they are loopback, private, link-local or otherwise
    # refused (docs/analysis.md, "Webhook targets"); empty refuses all of those.
    webhook_allowed_networks: tuple[IPNetwork, ...] = ()
    # Logs: "text" for people, "json" (one object per line) for log shippers.
    log_format: str = "text"
    # The address the metrics and health endpoints listen on (loopback unless Prometheus
    # scrapes this host from another one).
    metrics_host: str = "127.0.0.1"
    # Where `fieldhub web` keeps its gunicorn workers' shared metric files (None: under home).
    web_metrics_dir: Path | None = None
    web_workers: int = 2
    # Streaming exports one user may run at once, across every web process (fieldhub.web.exports).
    exports_per_user: int = 2
    # HTTP ingest: requests per second one device may make (docs/devices.md, "HTTP ingest").
    ingest_rate_per_s: int = 10
    # What this host runs (FIELDHUB_ROLES), for `fieldhub status` and the production check.
    roles: tuple[Role, ...] = ()

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = environment(environ)
        mode = env.get("FIELDHUB_ENV", "development")
        if mode not in ("development", "production", "test"):
            raise ConfigError(f"FIELDHUB_ENV must be development, production or test, not {mode!r}")
        home = Path(env.get("FIELDHUB_HOME") or str(default_home())).resolve()
        ports = Ports(
            postgres=_port(env, "FIELDHUB_PG_PORT", Ports.postgres),
            mqtt_devices=_port(env, "FIELDHUB_MQTT_PORT", Ports.mqtt_devices),
            mqtt_devices_tls=_port(env, "FIELDHUB_MQTTS_PORT", Ports.mqtt_devices_tls),
            mqtt_devices_cert=_port(env, "FIELDHUB_MQTTS_CERT_PORT", Ports.mqtt_devices_cert),
            mqtt_services=_port(env, "FIELDHUB_MQTT_SERVICE_PORT", Ports.mqtt_services),
            web=_port(env, "FIELDHUB_WEB_PORT", Ports.web),
            bridge_metrics=_port(env, "FIELDHUB_BRIDGE_METRICS_PORT", Ports.bridge_metrics),
            web_metrics=_port(env, "FIELDHUB_WEB_METRICS_PORT", Ports.web_metrics),
            worker_metrics=_port(env, "FIELDHUB_WORKER_METRICS_PORT", Ports.worker_metrics),
        )
        log_format = env.get("FIELDHUB_LOG_FORMAT", "").strip().lower() or "text"
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"FIELDHUB_LOG_FORMAT must be text or json, not {log_format!r}")
        web_metrics_dir = env.get("FIELDHUB_WEB_METRICS_DIR") or None
        settings = cls(
            env=mode,
            home=home,
            ports=ports,
            database_url=env.get("DATABASE_URL") or None,
            read_database_url=env.get("READ_DATABASE_URL") or None,
            mqtt_url=env.get("MQTT_URL") or None,
            mqtt_device_url=env.get("MQTT_DEVICE_URL") or None,
            secret_key=env.get("FIELDHUB_SECRET_KEY") or None,
            web_host=env.get("FIELDHUB_WEB_HOST", "127.0.0.1"),
            log_level=env.get("FIELDHUB_LOG_LEVEL", "INFO").upper(),
            mosquitto_dir=Path(env.get("FIELDHUB_MOSQUITTO_DIR", str(home / "mosquitto"))),
            mosquitto_pid_file=Path(
                env.get("FIELDHUB_MOSQUITTO_PID_FILE", str(home / "mosquitto" / "mosquitto.pid"))
            ),
            acl_dir=Path(env.get("FIELDHUB_ACL_DIR", str(home / "acl.d"))),
            brokers=_broker_urls(env, "FIELDHUB_BROKERS"),
            broker_service_urls=dict(_broker_urls(env, "FIELDHUB_BROKER_SERVICE_URLS")),
            local_brokers=_local_brokers(env),
            trusted_proxies=_networks(env, "FIELDHUB_TRUSTED_PROXIES"),
            retention_raw_days=_days(env, "FIELDHUB_RETENTION_RAW_DAYS", 30),
            retention_rollup_1m_days=_days(env, "FIELDHUB_RETENTION_ROLLUP_1M_DAYS", 365),
            retention_rollup_1h_days=_days(env, "FIELDHUB_RETENTION_ROLLUP_1H_DAYS", 0),
            retention_dead_letters_days=_days(env, "FIELDHUB_RETENTION_DEAD_LETTERS_DAYS", 14),
            webhook_allowed_networks=_networks(env, "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS"),
            log_format=log_format,
            metrics_host=env.get("FIELDHUB_METRICS_HOST", "").strip() or "127.0.0.1",
            web_metrics_dir=Path(web_metrics_dir) if web_metrics_dir else None,
            web_workers=_count(env, "FIELDHUB_WEB_WORKERS", 2),
            exports_per_user=_count(env, "FIELDHUB_EXPORTS_PER_USER", 2),
            ingest_rate_per_s=_count(env, "FIELDHUB_INGEST_RATE_PER_S", 10),
            roles=parse_roles(env.get("FIELDHUB_ROLES", "")),
        )
        settings.check()
        return settings

    @property
    def broker_names(self) -> tuple[str, ...]:
        return broker_names(self.brokers, self.local_brokers)

    def check(self) -> None:
        if self.exports_per_user > MAX_EXPORTS_PER_USER:
            raise ConfigError(f"FIELDHUB_EXPORTS_PER_USER is at most {MAX_EXPORTS_PER_USER}")
        unknown = sorted(set(self.broker_service_urls) - {name for name, _ in self.brokers})
        if unknown:
            raise ConfigError(
                "FIELDHUB_BROKER_SERVICE_URLS names brokers FIELDHUB_BROKERS does not list: "
                + ", ".join(unknown)
            )
        if not self.production:
            return
        present = {
            "DATABASE_URL": self.database_url,
            "MQTT_URL": self.mqtt_url,
            "MQTT_DEVICE_URL": self.mqtt_device_url or (self.brokers and "FIELDHUB_BROKERS"),
            "FIELDHUB_SECRET_KEY": self.secret_key,
        }
        # A host that names its roles needs only their secrets (a web host never holds the
        # bridge's MQTT password); one that does not may run anything, so it needs them all.
        needed = required_variables(self.roles) if self.roles else tuple(present)
        missing = [name for name in needed if not present.get(name)]
        if missing:
            raise ConfigError("production mode needs these set explicitly: " + ", ".join(missing))
        if self.secret_key is not None and len(self.secret_key) < 32:
            raise ConfigError("FIELDHUB_SECRET_KEY must be at least 32 characters")

    # -- paths of the local stack ---------------------------------------------------------
    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"


LOG_FORMATS = ("text", "json")

# What each kind of role reads beyond the defaults, in production (see Settings.check).
ROLE_KINDS: dict[str, tuple[str, ...]] = {
    "database": (),  # PostgreSQL (Debian's unit)
    "broker": (),  # Mosquitto (Debian's unit), instance = broker name
    "migrate": ("DATABASE_URL",),
    "auth-sync": ("DATABASE_URL",),  # instance = broker name
    "bridge": ("DATABASE_URL", "MQTT_URL"),  # instance = BROKER-N
    "web": ("DATABASE_URL", "FIELDHUB_SECRET_KEY", "MQTT_DEVICE_URL"),  # instance = N
    "worker": ("DATABASE_URL",),
    "nginx": (),
}


@dataclasses.dataclass(frozen=True)
class Role:
    """One entry of FIELDHUB_ROLES: a kind and, for templated units, the instance
    (`bridge@broker-1-2` is fieldhub-bridge@broker-1-2.service)."""

    kind: str
    instance: str = ""

    def __str__(self) -> str:
        return f"{self.kind}@{self.instance}" if self.instance else self.kind


def parse_roles(raw: str) -> tuple[Role, ...]:
    roles: list[Role] = []
    for item in raw.replace(" ", ",").split(","):
        if not item:
            continue
        kind, _, instance = item.partition("@")
        if kind not in ROLE_KINDS:
            raise ConfigError(
                f"FIELDHUB_ROLES: unknown role {kind!r}; roles are " + ", ".join(ROLE_KINDS)
            )
        if kind in ("bridge", "web", "auth-sync", "broker") and not instance:
            raise ConfigError(
                f"FIELDHUB_ROLES: {kind} needs an instance, like {kind}@{_EXAMPLE[kind]}"
            )
        roles.append(Role(kind, instance))
    return tuple(roles)


_EXAMPLE = {"bridge": "broker-1-1", "web": "1", "auth-sync": "broker-1", "broker": "broker-1"}


def required_variables(roles: tuple[Role, ...]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for role in roles:
        names.update(dict.fromkeys(ROLE_KINDS[role.kind]))
    return tuple(names)


def split_bridge_name(name: str) -> tuple[str, int]:
    """`broker-1-2` (a bridge unit's instance) into ("broker-1", 2)."""
    broker, sep, number = name.rpartition("-")
    if not sep or not broker or not number.isdigit() or int(number) < 1:
        raise ConfigError(f"a bridge is named BROKER-INSTANCE, like broker-1-2, not {name!r}")
    return broker, int(number)


DEFAULT_BROKER = "broker-1"
BROKER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def broker_names(brokers: tuple[tuple[str, str], ...], local_brokers: int) -> tuple[str, ...]:
    """The configured brokers' names, or those of the local stack's brokers (broker-1 ...)."""
    if brokers:
        return tuple(name for name, _ in brokers)
    return tuple(f"broker-{n}" for n in range(1, local_brokers + 1))


def configured_broker_names(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Just the broker names, for code that homes a new device but gets no Settings (the
    registry functions, which the CLI, the web app and the simulator all call)."""
    env = environment(environ)
    return broker_names(_broker_urls(env, "FIELDHUB_BROKERS"), _local_brokers(env))


def _broker_urls(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """`broker-1=mqtt://host:1883,broker-2=mqtt://host2:1883` into ((name, url), ...)."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    entries: list[tuple[str, str]] = []
    for item in raw.split(","):
        broker, sep, url = (part.strip() for part in item.partition("="))
        if not sep or not broker or not url:
            raise ConfigError(f"{name}: {item.strip()!r} must look like NAME=mqtt://HOST:PORT")
        if not set(broker) <= BROKER_NAME_CHARS:
            raise ConfigError(
                f"{name}: broker name {broker!r} may hold only lowercase letters, digits, - and _"
            )
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"{name}: the URL of {broker} must start with mqtt:// or mqtts://")
        if broker in dict(entries):
            raise ConfigError(f"{name}: broker {broker} is listed twice")
        entries.append((broker, url))
    return tuple(entries)


def _local_brokers(env: Mapping[str, str]) -> int:
    raw = env.get("FIELDHUB_LOCAL_BROKERS", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 9:
        raise ConfigError(f"FIELDHUB_LOCAL_BROKERS must be a number from 1 to 9, not {raw!r}")
    return int(raw)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, not {raw!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{name} must be between 1 and 65535, not {port}")
    return port


def _days(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        days = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of days, not {raw!r}") from None
    if days < 0:
        raise ConfigError(f"{name} must be 0 (keep forever) or a positive number of days")
    return days


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """`127.0.0.0/8, fd12:3456::/48, 10.1.2.3` (a bare address is its /32 or /128)."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    networks: list[IPNetwork] = []
    for item in raw.split(","):
        text = item.strip()
        if not text:
            raise ConfigError(f"{name}: an empty entry; separate networks with single commas")
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            # ip_network's own message says what is wrong ("has host bits set", "does not
            # appear to be an IPv4 or IPv6 network"); the variable and the entry come first.
            raise ConfigError(
                f"{name}: {text!r} is not a network in CIDR form like 10.0.0.0/8 ({exc})"
            ) from None
    return tuple(networks)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


# -- metrics ports -------------------------------------------------------------------------
# With several brokers, each broker's bridge processes on a host take a block of this many
# ports (broker-1: base .. base + 9, broker-2: base + 10 ..), so the per-broker units of one
# host never collide.
BRIDGE_PORTS_PER_BROKER = 10


def bridge_metrics_port(settings: Settings, broker: str | None, instance: int) -> int:
    """The default metrics port of bridge process (broker, instance)."""
    names = settings.broker_names
    index = names.index(broker) if broker in names and len(names) > 1 else 0
    if len(names) > 1 and instance > BRIDGE_PORTS_PER_BROKER:
        raise ConfigError(
            f"bridge instance {instance} of {broker}: with several brokers give it "
            "--metrics-port (the default port blocks hold 10 instances per broker)"
        )
    return settings.ports.bridge_metrics + BRIDGE_PORTS_PER_BROKER * index + instance - 1


# -- the environment and the env file ----------------------------------------------------------
def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The process environment, with FIELDHUB_ENV_FILE's values for what it leaves unset."""
    env = os.environ if environ is None else environ
    path = env.get("FIELDHUB_ENV_FILE")
    if not path:
        return env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"FIELDHUB_ENV_FILE: cannot read {path}: {exc.strerror}") from None
    return {**parse_env_file(text, path), **env}


def parse_env_file(text: str, where: str = "env file") -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: # and ; start comments,
    values may be wrapped in single or double quotes, blank lines are skipped."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum() or key[0].isdigit():
            raise ConfigError(f"{where}, line {number}: expected NAME=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable: its meaning, and how the sample env file shows it (set to
    `example`, or commented out with its default when the host may leave it unset)."""

    name: str
    help: str
    example: str = ""
    required: bool = False  # uncommented in the sample: a production host must set it


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "FIELDHUB_ENV",
        "development, production or test; production refuses to start "
        "without the secrets its roles need",
        "production",
        required=True,
    ),
    Variable(
        "FIELDHUB_ROLES",
        "what this host runs, comma-separated: database, broker@NAME, "
        "auth-sync@NAME, bridge@BROKER-N, web@N, worker, migrate, nginx (the systemd "
        "units' names); `fieldhub status` probes them, production checks their secrets",
        "web@1,worker",
        required=True,
    ),
    Variable(
        "FIELDHUB_HOME",
        "state directory (the units' StateDirectory)",
        "/var/lib/fieldhub",
        required=True,
    ),
    Variable(
        "FIELDHUB_ENV_FILE",
        "a file of these variables filling in what the environment "
        "leaves unset (set by /etc/profile.d/fieldhub.sh for operators' shells; the units "
        "use EnvironmentFile= instead)",
        "/etc/fieldhub/fieldhub.env",
    ),
    Variable(
        "DATABASE_URL",
        "the primary PostgreSQL (every write; the registry). With Patroni, name every database "
        "host: each process connects to whichever is the primary now (fieldhub adds "
        "target_session_attrs=read-write, TCP keepalives and tcp_user_timeout=10000 unless the "
        "URL sets them) and finds the new one after a failover by itself (docs/scaling.md)",
        "postgresql://fieldhub:CHANGE-ME@db1.internal:5432,db2.internal:5432,db3.internal:5432"
        "/fieldhub?sslmode=require",
        required=True,
    ),
    Variable(
        "READ_DATABASE_URL",
        "where the web app reads from (default: DATABASE_URL); the same host list works: "
        "fieldhub adds target_session_attrs=prefer-standby, so a standby serves the reads and "
        "the primary does when none answers",
        "postgresql://fieldhub:CHANGE-ME@db2.internal:5432,db3.internal:5432,db1.internal:5432"
        "/fieldhub?sslmode=require",
    ),
    Variable(
        "MQTT_URL",
        "the bridge accounts' name and password on the brokers' service listener (bridge "
        "hosts only): instance N logs in as NAME-N (`fieldhub service-account bridges`); the "
        "address is used when FIELDHUB_BROKER_SERVICE_URLS is unset",
        "mqtt://svc.bridge:CHANGE-ME@mqtt1.internal:1884",
    ),
    Variable(
        "MQTT_DEVICE_URL",
        "with one broker: what devices are told to connect to",
        "mqtts://mqtt.example.com:8883",
    ),
    Variable(
        "FIELDHUB_BROKERS",
        "several brokers: NAME=URL devices connect to, "
        "comma-separated, the same on every host (it decides where new devices go)",
        "broker-1=mqtts://mqtt1.example.com:8883,broker-2=mqtts://mqtt2.example.com:8883",
    ),
    Variable(
        "FIELDHUB_BROKER_SERVICE_URLS",
        "several brokers: NAME=URL of each broker's "
        "service listener for the bridges (no credentials: those come from MQTT_URL)",
        "broker-1=mqtt://mqtt1.internal:1884,broker-2=mqtt://mqtt2.internal:1884",
    ),
    Variable(
        "FIELDHUB_LOCAL_BROKERS",
        "local stack only: how many brokers `fieldhub up` runs when FIELDHUB_BROKERS is unset",
        "1",
    ),
    Variable(
        "FIELDHUB_SECRET_KEY",
        "signs the web app's flash cookies; at least 32 characters, "
        "the same on every web host (web hosts only)",
        "CHANGE-ME-to-64-random-characters",
    ),
    Variable(
        "FIELDHUB_TRUSTED_PROXIES",
        "web hosts: the reverse proxies (nginx) whose X-Forwarded-For names the client, for "
        "login throttling and logs; comma-separated CIDRs or addresses (docs/security.md)",
        "10.0.0.30/32",
    ),
    Variable("FIELDHUB_WEB_HOST", "the address gunicorn listens on", "127.0.0.1"),
    Variable("FIELDHUB_WEB_PORT", "gunicorn's port (web@N listens on this + N - 1)", "8000"),
    Variable("FIELDHUB_WEB_WORKERS", "gunicorn worker processes per web instance", "2"),
    Variable(
        "FIELDHUB_EXPORTS_PER_USER",
        "streaming exports one user may run at once, on all web hosts together (max 16)",
        "2",
    ),
    Variable(
        "FIELDHUB_INGEST_RATE_PER_S",
        "HTTP ingest requests per second one device may make (429 beyond)",
        "10",
    ),
    Variable(
        "FIELDHUB_METRICS_HOST",
        "the address the metrics and health endpoints of the "
        "bridge, worker and web listen on; Prometheus on another host needs this host's "
        "private address",
        "127.0.0.1",
    ),
    Variable(
        "FIELDHUB_BRIDGE_METRICS_PORT",
        "the bridge's metrics and health port (instance N "
        "of the Kth broker: this + 10 x (K - 1) + N - 1)",
        "9108",
    ),
    Variable(
        "FIELDHUB_WEB_METRICS_PORT", "the web app's metrics port (web@N: this + N - 1)", "9120"
    ),
    Variable("FIELDHUB_WORKER_METRICS_PORT", "the worker's metrics and health port", "9130"),
    Variable(
        "FIELDHUB_WEB_METRICS_DIR",
        "where gunicorn's workers keep their shared metric "
        "files, emptied at start (the unit gives each instance one under /run)",
        "/run/fieldhub-web-1/metrics",
    ),
    Variable("FIELDHUB_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO"),
    Variable(
        "FIELDHUB_LOG_FORMAT",
        "text, or json for one JSON object per line (time, level, "
        "logger, message, role, exception)",
        "json",
    ),
    Variable(
        "FIELDHUB_MOSQUITTO_DIR",
        "broker hosts: the folder whose auth/ holds the password and ACL files auth-sync writes",
        "/var/lib/fieldhub-broker",
    ),
    Variable(
        "FIELDHUB_MOSQUITTO_PID_FILE",
        "broker hosts: Mosquitto's pid file, for the SIGHUP that makes it reload those files",
        "/run/mosquitto/mosquitto.pid",
    ),
    Variable(
        "FIELDHUB_ACL_DIR",
        "broker hosts: operators' extra ACL files (*.acl) merged into the rendered ACL",
        "/etc/fieldhub/acl.d",
    ),
    Variable("FIELDHUB_PG_PORT", "local stack only: its PostgreSQL's port", "15432"),
    Variable("FIELDHUB_MQTT_PORT", "Mosquitto's plain device listener (loopback)", "1883"),
    Variable("FIELDHUB_MQTTS_PORT", "Mosquitto's TLS device listener", "8883"),
    Variable(
        "FIELDHUB_MQTTS_CERT_PORT",
        "Mosquitto's TLS listener for devices with a client certificate (every broker host)",
        "8884",
    ),
    Variable("FIELDHUB_MQTT_SERVICE_PORT", "Mosquitto's service listener for the bridges", "1884"),
    Variable(
        "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS",
        "worker hosts: networks webhooks may reach although they are loopback, private or "
        "link-local (comma-separated CIDRs; refused by default, docs/analysis.md)",
        "10.20.0.0/16",
    ),
    Variable("FIELDHUB_RETENTION_RAW_DAYS", "days of raw readings kept (0 = forever)", "30"),
    Variable("FIELDHUB_RETENTION_ROLLUP_1M_DAYS", "days of 1-minute rollups kept", "365"),
    Variable("FIELDHUB_RETENTION_ROLLUP_1H_DAYS", "days of 1-hour rollups kept", "0"),
    Variable("FIELDHUB_RETENTION_DEAD_LETTERS_DAYS", "days of dead letters kept", "14"),
)


def render_env_example() -> str:
    """deploy/fieldhub.env.example: every variable, required ones set, the rest commented."""
    lines = [
        "# /etc/fieldhub/fieldhub.env: the settings of one fieldhub host, read by every",
        "# fieldhub unit (EnvironmentFile=). Owner root, mode 0640, group fieldhub: it holds",
        "# secrets. A host needs only what its roles read (FIELDHUB_ROLES); lines starting",
        "# with # show the default or an example. Generated from fieldhub/core/config.py",
        "# (python -m fieldhub.core.config); docs/deploy.md explains each role's needs.",
    ]
    for var in VARIABLES:
        lines += ["", *(f"# {line}" for line in textwrap.wrap(var.help, 88))]
        lines.append(f"{'' if var.required else '#'}{var.name}={var.example}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_env_example())
