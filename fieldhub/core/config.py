"""Configuration: every environment variable fieldhub reads is read here, and only here.

Each process builds one `Settings` with `Settings.from_env()` and passes it (or the pieces it
needs) down; nothing else calls `os.environ`. In development the defaults describe the
project-local stack that `fieldhub up` starts under `$FIELDHUB_HOME` (default `./var`). In
production (`FIELDHUB_ENV=production`) every secret must be given explicitly: a missing one is
a startup error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

# The source checkout this package runs from. Only the development default of FIELDHUB_HOME
# (`./var` of the checkout) is derived from it; an installed package finds its own files next
# to its modules, and a production host sets FIELDHUB_HOME.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """Ports of the project-local stack (development defaults, all overridable)."""

    postgres: int = 15432
    mqtt_devices: int = 11883  # plain MQTT for devices, loopback only
    mqtt_devices_tls: int = 18883  # TLS for devices in the field
    mqtt_services: int = 11884  # the backend's own service accounts, loopback only
    web: int = 8000
    bridge_metrics: int = 9108


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

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        mode = env.get("FIELDHUB_ENV", "development")
        if mode not in ("development", "production", "test"):
            raise ConfigError(f"FIELDHUB_ENV must be development, production or test, not {mode!r}")
        home = Path(env.get("FIELDHUB_HOME", str(PROJECT_ROOT / "var"))).resolve()
        ports = Ports(
            postgres=_port(env, "FIELDHUB_PG_PORT", Ports.postgres),
            mqtt_devices=_port(env, "FIELDHUB_MQTT_PORT", Ports.mqtt_devices),
            mqtt_devices_tls=_port(env, "FIELDHUB_MQTTS_PORT", Ports.mqtt_devices_tls),
            mqtt_services=_port(env, "FIELDHUB_MQTT_SERVICE_PORT", Ports.mqtt_services),
            web=_port(env, "FIELDHUB_WEB_PORT", Ports.web),
            bridge_metrics=_port(env, "FIELDHUB_BRIDGE_METRICS_PORT", Ports.bridge_metrics),
        )
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
        )
        settings.check()
        return settings

    @property
    def broker_names(self) -> tuple[str, ...]:
        return broker_names(self.brokers, self.local_brokers)

    def check(self) -> None:
        unknown = sorted(set(self.broker_service_urls) - {name for name, _ in self.brokers})
        if unknown:
            raise ConfigError(
                "FIELDHUB_BROKER_SERVICE_URLS names brokers FIELDHUB_BROKERS does not list: "
                + ", ".join(unknown)
            )
        if not self.production:
            return
        missing = [
            name
            for name, value in (
                ("DATABASE_URL", self.database_url),
                ("MQTT_URL", self.mqtt_url),
                ("MQTT_DEVICE_URL", self.mqtt_device_url),
                ("FIELDHUB_SECRET_KEY", self.secret_key),
            )
            if not value
        ]
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
    env = os.environ if environ is None else environ
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
