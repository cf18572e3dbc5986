"""Where each process finds its servers: explicit URLs from the settings, or the local stack.

`fieldhub up` starts a local PostgreSQL and Mosquitto under $FIELDHUB_HOME unless DATABASE_URL
and MQTT_URL point elsewhere; every other command resolves its endpoints the same way, so
`fieldhub device create` talks to whatever `fieldhub up` started.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from fieldhub.config import ConfigError, Settings
from fieldhub.stack.postgres import PostgresCluster

BRIDGE_ACCOUNT = "svc.bridge"


@dataclasses.dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                f"MQTT URL must start with mqtt:// or mqtts://, not {url.split(':')[0]}://"
            )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if parts.scheme == "mqtts" else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "mqtts",
        )

    def url(self, *, with_credentials: bool = False) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        auth = ""
        if with_credentials and self.username:
            auth = quote(self.username, safe="")
            if self.password:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        return f"{scheme}://{auth}{self.host}:{self.port}"


def local_cluster(settings: Settings) -> PostgresCluster:
    return PostgresCluster(
        settings.home / "postgres",
        settings.ports.postgres,
        settings.secrets_dir / "postgres.password",
    )


def service_secret(settings: Settings, name: str) -> str:
    """The local stack's password for a backend account, created on first use (0600)."""
    path: Path = settings.secrets_dir / f"{name}.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    cluster = local_cluster(settings)
    if not cluster.password_file.exists():
        raise ConfigError(
            f"no local database under {settings.home} and DATABASE_URL is not set; "
            "start the stack first (`fieldhub up --detach`)"
        )
    return cluster.url()


def read_database_url(settings: Settings) -> str:
    return settings.read_database_url or database_url(settings)


def bridge_mqtt(settings: Settings) -> MqttEndpoint:
    """The bridge's broker account: MQTT_URL (with credentials) or the local service listener."""
    if settings.mqtt_url:
        return MqttEndpoint.parse(settings.mqtt_url)
    return MqttEndpoint(
        "127.0.0.1",
        settings.ports.mqtt_services,
        BRIDGE_ACCOUNT,
        service_secret(settings, BRIDGE_ACCOUNT),
        tls=False,
    )


def device_mqtt_url(settings: Settings) -> str:
    """What a device is told to connect to (in its credentials output)."""
    if settings.mqtt_device_url:
        return settings.mqtt_device_url
    return f"mqtt://127.0.0.1:{settings.ports.mqtt_devices}"
