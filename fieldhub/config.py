"""Configuration: every environment variable fieldhub reads is read here, and only here.

Each process builds one `Settings` with `Settings.from_env()` and passes it (or the pieces it
needs) down; nothing else calls `os.environ`. In development the defaults describe the
project-local stack that `fieldhub up` starts under `$FIELDHUB_HOME` (default `./var`). In
production (`FIELDHUB_ENV=production`) every secret must be given explicitly: a missing one is
a startup error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    # Retention horizons of the analysis worker, in days; 0 keeps the data forever.
    retention_raw_days: int = 30
    retention_rollup_1m_days: int = 365
    retention_rollup_1h_days: int = 0
    retention_dead_letters_days: int = 14

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
            retention_raw_days=_days(env, "FIELDHUB_RETENTION_RAW_DAYS", 30),
            retention_rollup_1m_days=_days(env, "FIELDHUB_RETENTION_ROLLUP_1M_DAYS", 365),
            retention_rollup_1h_days=_days(env, "FIELDHUB_RETENTION_ROLLUP_1H_DAYS", 0),
            retention_dead_letters_days=_days(env, "FIELDHUB_RETENTION_DEAD_LETTERS_DAYS", 14),
        )
        settings.check()
        return settings

    def check(self) -> None:
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
