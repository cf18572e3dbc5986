"""Where each process finds its servers: explicit URLs from the settings, or the local stack.

`fieldhub up` starts a local PostgreSQL and Mosquitto under $FIELDHUB_HOME unless DATABASE_URL
and MQTT_URL point elsewhere; every other command resolves its endpoints the same way, so
`fieldhub device create` talks to whatever `fieldhub up` started. The local stack's addresses
are computed from the settings alone (ports, $FIELDHUB_HOME/secrets), never from the stack's
code, so every process can resolve them; the end of the module formats them for people."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from fieldhub.core.brokers import urls_in_preference
from fieldhub.core.config import DEFAULT_BROKER, ConfigError, Settings
from fieldhub.core.registry import BRIDGE_ACCOUNT_BASE, RegistryError, bridge_account

# The local stack's PostgreSQL (fieldhub/stack/postgres.py creates it with these): its own
# superuser role, the database the backend uses, its address; local_db_password_file() below
# says where its password is kept.
LOCAL_DB_SUPERUSER = "fieldhub"
LOCAL_DB_NAME = "fieldhub"
LOCAL_DB_HOST = "127.0.0.1"


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


def local_db_password_file(settings: Settings) -> Path:
    return settings.secrets_dir / "postgres.password"


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
    password_file = local_db_password_file(settings)
    if not password_file.exists():
        raise ConfigError(
            f"no local database under {settings.home} and DATABASE_URL is not set; "
            "start the stack first (`fieldhub up --detach`)"
        )
    password = quote(password_file.read_text().strip(), safe="")
    return (
        f"postgresql://{LOCAL_DB_SUPERUSER}:{password}@{LOCAL_DB_HOST}:{settings.ports.postgres}"
        f"/{LOCAL_DB_NAME}"
    )


def read_database_url(settings: Settings) -> str:
    return settings.read_database_url or database_url(settings)


# A local stack's broker N (N >= 2) listens on each of broker 1's ports plus this times N - 1.
LOCAL_BROKER_PORT_STEP = 1000


@dataclasses.dataclass(frozen=True)
class BrokerPorts:
    devices: int
    devices_tls: int
    services: int
    devices_cert: int


def local_broker_ports(settings: Settings, broker: str) -> BrokerPorts:
    """The ports of a broker of the local stack (broker-1 has the FIELDHUB_*_PORT ones)."""
    offset = LOCAL_BROKER_PORT_STEP * (local_broker_number(broker) - 1)
    return BrokerPorts(
        settings.ports.mqtt_devices + offset,
        settings.ports.mqtt_devices_tls + offset,
        settings.ports.mqtt_services + offset,
        settings.ports.mqtt_devices_cert + offset,
    )


def local_broker_number(broker: str) -> int:
    number = broker.removeprefix("broker-")
    if not number.isdigit() or int(number) < 1:
        raise ConfigError(
            f"a local stack's brokers are named broker-1, broker-2, ..., not {broker}"
        )
    return int(number)


def local_broker_dir(settings: Settings, broker: str) -> Path:
    """broker-1 keeps the single stack's directory, so growing to a cluster keeps its data."""
    if broker == DEFAULT_BROKER:
        return settings.mosquitto_dir
    return settings.home / f"mosquitto-{broker}"


def check_broker(settings: Settings, broker: str | None) -> str:
    """`broker`, or the only configured one if None; a name not configured is an error."""
    names = settings.broker_names
    if broker is None:
        if len(names) > 1:
            raise ConfigError(
                f"{len(names)} brokers are configured ({', '.join(names)}); say which one"
            )
        return names[0]
    if broker not in names:
        raise ConfigError(
            f"broker {broker!r} is not configured; the brokers are {', '.join(names)}"
        )
    return broker


def bridge_credentials(settings: Settings) -> tuple[str, str | None]:
    """(base of the bridge accounts' names, their shared password): MQTT_URL's user and
    password, else `svc.bridge` and the local stack's secret. Instance N logs in as
    `<base>-N` (registry.bridge_account)."""
    if settings.mqtt_url:
        configured = MqttEndpoint.parse(settings.mqtt_url)
        return configured.username or BRIDGE_ACCOUNT_BASE, configured.password
    # The local stack's bridge accounts share this secret, kept in secrets/svc.bridge.password.
    return BRIDGE_ACCOUNT_BASE, service_secret(settings, BRIDGE_ACCOUNT_BASE)


def bridge_mqtt(settings: Settings, broker: str | None = None, instance: int = 1) -> MqttEndpoint:
    """Bridge instance `instance`'s account on a broker's service listener.

    Credentials come from MQTT_URL or the local stack's secret (bridge_credentials; the same
    accounts on every broker: auth-sync renders every service account into each), or from
    the broker's FIELDHUB_BROKER_SERVICE_URLS entry if it has them; the address from that
    entry, else MQTT_URL (the first broker only), else the local stack."""
    name = check_broker(settings, broker)
    base, password = bridge_credentials(settings)
    service_url = settings.broker_service_urls.get(name)
    if service_url:
        address = MqttEndpoint.parse(service_url)
        base = address.username or base
        password = address.password or password
    elif settings.mqtt_url and name == settings.broker_names[0]:
        address = MqttEndpoint.parse(settings.mqtt_url)
    elif settings.mqtt_url:
        raise ConfigError(
            f"FIELDHUB_BROKER_SERVICE_URLS gives no service URL for {name}; the bridge cannot "
            "reach it"
        )
    else:
        port = local_broker_ports(settings, name).services
        address = MqttEndpoint("127.0.0.1", port, None, None, tls=False)
    try:
        username = bridge_account(instance, base)
    except RegistryError as exc:
        raise ConfigError(f"the bridge's broker account: {exc}") from None
    return dataclasses.replace(address, username=username, password=password)


def device_mqtt_url(settings: Settings, broker: str | None = None) -> str:
    """What a device homed on `broker` is told to connect to (in its credentials output)."""
    name = broker or settings.broker_names[0]
    configured = dict(settings.brokers)
    if name in configured:
        return configured[name]
    if settings.mqtt_device_url and name == settings.broker_names[0]:
        return settings.mqtt_device_url
    if settings.brokers:
        raise ConfigError(f"broker {name!r} is not in FIELDHUB_BROKERS")
    return f"mqtt://127.0.0.1:{local_broker_ports(settings, name).devices}"


def device_mqtt_urls(settings: Settings, device_id: str, broker: str) -> list[str]:
    """Every broker URL a device may use, in the order it should try them (docs/devices.md):
    its home broker's first, then each other configured broker's as a standby. A home broker
    this host's configuration does not list is left out rather than guessed."""
    return urls_in_preference(device_id, broker, device_mqtt_url_map(settings))


def device_cert_mqtt_url(settings: Settings, broker: str | None = None) -> str:
    """Where a certificate device homed on `broker` connects: the certificate listener of the
    host its password URL names (FIELDHUB_MQTTS_CERT_PORT is the same on every broker host),
    or the local stack's."""
    name = broker or settings.broker_names[0]
    if settings.brokers or (settings.mqtt_device_url and name == settings.broker_names[0]):
        host = MqttEndpoint.parse(device_mqtt_url(settings, name)).host
        return f"mqtts://{host}:{settings.ports.mqtt_devices_cert}"
    return f"mqtts://localhost:{local_broker_ports(settings, name).devices_cert}"


def device_cert_mqtt_urls(settings: Settings, device_id: str, broker: str) -> list[str]:
    """`device_mqtt_urls` of the certificate listeners: home first, then the standbys."""
    urls = {name: device_cert_mqtt_url(settings, name) for name in settings.broker_names}
    return urls_in_preference(device_id, broker, urls)


def device_mqtt_url_map(settings: Settings) -> dict[str, str]:
    """Broker name -> the URL devices use for it, for every configured broker, in order."""
    return {name: device_mqtt_url(settings, name) for name in settings.broker_names}


# -- URLs to show people (status, banner, the supervisor's state file) ---------------------------
def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print and to store."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def web_url(settings: Settings) -> str:
    host = settings.web_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a bind-all address to loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ports.web}/"


def stack_urls(settings: Settings) -> dict[str, str | None]:
    try:
        database = mask_url(database_url(settings))
    except ConfigError:
        database = mask_url(local_cluster_url(settings))
    return {
        "database_url": database,
        "mqtt_url": _bridge_url(settings),
        "mqtt_device_url": device_mqtt_url(settings),
        "mqtts_device_url": None
        if settings.mqtt_device_url or settings.mqtt_url
        else f"mqtts://localhost:{settings.ports.mqtt_devices_tls}",
        "web_url": web_url(settings),
        "bridge_metrics_url": f"http://127.0.0.1:{settings.ports.bridge_metrics}/metrics",
    }


def broker_urls(settings: Settings) -> dict[str, dict[str, str]]:
    """Each broker's device URL and (without credentials) the bridge's service URL."""
    return {
        name: {
            "mqtt_device_url": device_mqtt_url(settings, name),
            "mqtt_url": bridge_mqtt(settings, name).url(),
        }
        for name in settings.broker_names
    }


def _bridge_url(settings: Settings) -> str:
    if settings.mqtt_url:
        return MqttEndpoint.parse(settings.mqtt_url).url()
    return f"mqtt://127.0.0.1:{settings.ports.mqtt_services}"


def local_cluster_url(settings: Settings) -> str:
    # Before the first `up` there is no password yet; show where the database will be.
    return (
        f"postgresql://{LOCAL_DB_SUPERUSER}:***@{LOCAL_DB_HOST}:{settings.ports.postgres}"
        f"/{LOCAL_DB_NAME}"
    )
