"""The multi-host layout of `fieldhub bench hosts`, as pure rules: which host runs which roles,
what each role runs (its systemd unit from deploy/systemd/, or for the servers Debian's units
start, their command), each host's env file, and the accounting of what the devices published
against what was stored.

Everything here is written as on a real host, with the deploy guide's paths (docs/deploy.md:
/opt/fieldhub, /etc/fieldhub/fieldhub.env, /var/lib/fieldhub, ...); the lab maps them into each
host's own directory (fieldhub/bench/units.py). Nothing here starts, reads or writes anything;
fieldhub/bench/hosts_lab.py applies it to a fieldhub/bench/netlab.py lab."""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from fieldhub.bench.units import HostPaths
from fieldhub.core.brokers import home_broker
from fieldhub.core.config import ROLE_KINDS, Role, required_variables
from fieldhub.sim.simulate import device_ids

SUBNET = "198.18.0.0/24"  # inside 198.18.0.0/15, the range reserved for benchmarks
BROKERS = ("broker-1", "broker-2")
BRIDGE_HOSTS = ("bridge-1", "bridge-2")
WEB_HOSTS = ("web-1", "web-2")
LOAD_ORG = "load"
LOAD_PREFIX = "load"
BRIDGE_ACCOUNT = "svc.bridge"  # MQTT_URL's user; instance N logs in as svc.bridge-N

# Ports on each host's own address (every host has the whole port space to itself): the
# deploy guide's.
PG_PORT = 5432
MQTT_LOOPBACK_PORT = 1883  # plain MQTT, the broker host's loopback only
MQTTS_PORT = 8883  # devices, TLS
MQTT_SERVICE_PORT = 1884  # the bridges' service listener
WEB_PORT = 8000  # gunicorn (web@1), behind nginx
HTTPS_PORT = 443  # nginx

# A real host's paths (docs/deploy.md), mapped into each lab host's directory.
INSTALL_PREFIX = "/opt/fieldhub"
ENV_FILE = "/etc/fieldhub/fieldhub.env"
STATE_DIR = "/var/lib/fieldhub"
BROKER_DIR = "/var/lib/fieldhub-broker"
TLS_DIR = "/etc/fieldhub/tls"
PG_DIR = "/var/lib/postgresql/15/main"  # the cluster's directory; its data in pgdata/
PG_CONF_DIR = "/etc/postgresql/15/main"
NGINX_DIR = "/etc/nginx"
NGINX_CERTIFICATE = "/etc/ssl/fieldhub/fullchain.pem"
NGINX_KEY = "/etc/ssl/fieldhub/privkey.pem"
LEDGER_DIR = "/var/lib/fieldhub-load/ledger"
DEBIAN_UNITS = "/lib/systemd/system"

# The roles fieldhub ships units for: the unit files under deploy/systemd/ (a template or a
# plain unit, then drop-ins), read as systemd reads them. `broker` is Debian's mosquitto.service
# with fieldhub's drop-in. This table, with COMMANDS below, is what each host runs.
UNIT_FILES: Mapping[str, tuple[str, ...]] = {
    "migrate": ("fieldhub-migrate.service",),
    "auth-sync": ("fieldhub-auth-sync@.service",),
    "bridge": ("fieldhub-bridge@.service",),
    "web": ("fieldhub-web@.service",),
    "worker": ("fieldhub-worker.service",),
    "broker": (f"{DEBIAN_UNITS}/mosquitto.service", "mosquitto.service.d/fieldhub.conf"),
}
# The servers Debian's own units start, run in the foreground as those units' processes run,
# and the load (no unit: a test tool). {pg_bindir}, {devices}, {interval} and {home_after} are
# filled in.
COMMANDS: Mapping[str, str] = {
    "database": f"{{pg_bindir}}/postgres -D {PG_DIR}/pgdata",
    # -e: not even the compiled-in error log of the machine before the config is read.
    "nginx": f"/usr/sbin/nginx -c {NGINX_DIR}/nginx.conf -e stderr -g 'daemon off;'",
    "simulate": f"{INSTALL_PREFIX}/bin/fieldhub simulate --devices {{devices}} "
    f"--interval {{interval}} --org {LOAD_ORG} --prefix {LOAD_PREFIX} --ledger {LEDGER_DIR} "
    "--home-after {home_after}",
}
COMMAND_USERS: Mapping[str, str] = {"database": "postgres"}


def unit_name(role: Role) -> str:
    """The unit that runs `role`: fieldhub-bridge@broker-1-2.service, mosquitto.service."""
    files = UNIT_FILES[role.kind]
    base = files[0].rsplit("/", 1)[-1]
    if role.instance and base.endswith("@.service"):
        return base.replace("@.service", f"@{role.instance}.service")
    return base


def command(role: Role, values: Mapping[str, str]) -> list[str]:
    """The argv of a role without a fieldhub unit (COMMANDS), filled in."""
    try:
        return shlex.split(COMMANDS[role.kind].format(**values))
    except KeyError as exc:
        raise ValueError(f"role {role} needs a value for {exc}") from None


@dataclasses.dataclass(frozen=True)
class HostPlan:
    name: str
    roles: tuple[Role, ...]

    @property
    def unit_roles(self) -> tuple[Role, ...]:
        """The roles FIELDHUB_ROLES names (not the load)."""
        return tuple(role for role in self.roles if role.kind in ROLE_KINDS)


def layout() -> tuple[HostPlan, ...]:
    """The hosts in start order: database, brokers, bridges (one process per broker each, so
    each instance consumes from both brokers), worker, web, nginx on a host of its own (it is
    what users reach; a web host can die under it), the load (simulated devices), and ops: the
    operator's host (migrations, accounts) and the user's (a browser, an API client)."""
    return (
        HostPlan("db", (Role("database"),)),
        *(HostPlan(b, (Role("broker", b), Role("auth-sync", b))) for b in BROKERS),
        *(
            HostPlan(host, tuple(Role("bridge", f"{b}-{n}") for b in BROKERS))
            for n, host in enumerate(BRIDGE_HOSTS, start=1)
        ),
        HostPlan("worker", (Role("worker"),)),
        *(HostPlan(name, (Role("web", "1"),)) for name in WEB_HOSTS),
        HostPlan("nginx", (Role("nginx"),)),
        HostPlan("load", (Role("simulate"),)),
        HostPlan("ops", (Role("migrate"),)),
    )


# -- env files ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Secrets:
    database_password: str
    bridge_password: str
    web_secret_key: str


def host_env(host: HostPlan, addresses: Mapping[str, str], secrets: Secrets) -> dict[str, str]:
    """The host's /etc/fieldhub/fieldhub.env: FIELDHUB_ROLES and only the secrets those roles
    need (a production check refuses a role without them). The load host is no production
    host: the simulator is a test tool that provisions its own devices."""
    db_password = quote(secrets.database_password, safe="")
    bridge_password = quote(secrets.bridge_password, safe="")
    first = addresses[BROKERS[0]]
    values = {
        "DATABASE_URL": f"postgresql://fieldhub:{db_password}@{addresses['db']}:{PG_PORT}"
        "/fieldhub?sslmode=require",
        "MQTT_URL": f"mqtt://{BRIDGE_ACCOUNT}:{bridge_password}@{first}:{MQTT_SERVICE_PORT}",
        "MQTT_DEVICE_URL": f"mqtts://{first}:{MQTTS_PORT}",
        "FIELDHUB_SECRET_KEY": secrets.web_secret_key,
    }
    brokers = {
        "FIELDHUB_BROKERS": ",".join(f"{b}=mqtts://{addresses[b]}:{MQTTS_PORT}" for b in BROKERS),
        "FIELDHUB_BROKER_SERVICE_URLS": ",".join(
            f"{b}=mqtt://{addresses[b]}:{MQTT_SERVICE_PORT}" for b in BROKERS
        ),
    }
    env = {"FIELDHUB_HOME": STATE_DIR}
    if not host.unit_roles:
        return {**env, "DATABASE_URL": values["DATABASE_URL"], **brokers}
    env.update(FIELDHUB_ENV="production", FIELDHUB_ROLES=",".join(map(str, host.unit_roles)))
    env.update({name: values[name] for name in required_variables(host.unit_roles)})
    kinds = {role.kind for role in host.unit_roles}
    if kinds & {"auth-sync", "bridge", "web", "worker", "migrate"}:
        env.update(brokers)
    if "broker" in kinds:
        env.update(
            FIELDHUB_MQTT_PORT=str(MQTT_LOOPBACK_PORT),
            FIELDHUB_MQTTS_PORT=str(MQTTS_PORT),
            FIELDHUB_MQTT_SERVICE_PORT=str(MQTT_SERVICE_PORT),
        )
    if "web" in kinds:
        env.update(
            FIELDHUB_WEB_HOST=addresses[host.name],
            FIELDHUB_WEB_PORT=str(WEB_PORT),
            # nginx's X-Forwarded-For then names the user (login throttling, logs).
            FIELDHUB_TRUSTED_PROXIES=f"{addresses['nginx']}/32",
        )
    return env


def render_env_file(env: Mapping[str, str]) -> str:
    """The env file's text (fieldhub.core.config.parse_env_file reads it back)."""
    lines = ["# fieldhub settings of this host (systemd EnvironmentFile=)"]
    for key, value in env.items():
        if any(c in value for c in '"\\\n'):
            raise ValueError(f"{key}: a value with quotes, backslashes or newlines")
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


# -- the servers' configuration, as the guide installs it ------------------------------------
def postgresql_settings(conf: str, paths: HostPaths) -> dict[str, str]:
    """deploy/postgresql/fieldhub.conf as settings for a lab host: its paths mapped into the
    host, and memory scaled down, since eleven hosts share this machine (the file is sized
    for a dedicated 16 GB host)."""
    settings: dict[str, str] = {}
    for raw in conf.splitlines():
        line = _without_comment(raw).strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"postgresql conf: {raw!r} is not name = value")
        settings[key.strip()] = _map_paths_in(value.strip(), paths)
    settings.update(LAB_POSTGRESQL_MEMORY)
    return settings


LAB_POSTGRESQL_MEMORY = {"shared_buffers": "'256MB'", "maintenance_work_mem": "'128MB'"}


def _without_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == "'":
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _map_paths_in(value: str, paths: HostPaths) -> str:
    """Absolute paths inside a setting (an archive_command's) mapped into the host."""
    return " ".join(
        paths.map_value(word) if word.startswith("/") else word for word in value.split(" ")
    )


# The sample's placeholders an operator replaces (docs/deploy.md, "Web hosts and nginx").
NGINX_SAMPLE_UPSTREAMS = ("10.0.0.21:8000", "10.0.0.22:8000")
NGINX_SAMPLE_NETWORK = "10.0.0.0/24"


def nginx_site(sample: str, upstreams: Sequence[str], paths: HostPaths) -> str:
    """deploy/nginx/fieldhub.conf as the operator edits it: the web hosts' addresses, the
    private network, the certificate paths."""
    if len(upstreams) != len(NGINX_SAMPLE_UPSTREAMS):
        raise ValueError(f"the sample has {len(NGINX_SAMPLE_UPSTREAMS)} web hosts")
    site = sample
    replacements = [
        *zip(NGINX_SAMPLE_UPSTREAMS, upstreams, strict=True),
        (NGINX_SAMPLE_NETWORK, SUBNET),
        (NGINX_CERTIFICATE, paths.map(NGINX_CERTIFICATE)),
        (NGINX_KEY, paths.map(NGINX_KEY)),
    ]
    for old, new in replacements:
        if old not in site:
            raise ValueError(f"deploy/nginx/fieldhub.conf no longer has {old}: update the lab")
        site = site.replace(old, new)
    return site


def nginx_main_conf(paths: HostPaths) -> str:
    """What Debian's /etc/nginx/nginx.conf does for the site, with every file nginx writes
    (pid, logs, temporary files) inside the host, since all hosts share the machine's disk."""
    lib = paths.map("/var/lib/nginx")
    return f"""# Debian's nginx.conf, reduced to what the fieldhub site needs (the lab's).
user www-data;
worker_processes 1;
pid {paths.map("/run/nginx.pid")};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    include {paths.map(NGINX_DIR)}/mime.types;
    default_type application/octet-stream;
    sendfile on;
    access_log {paths.map("/var/log/nginx")}/access.log;
    client_body_temp_path {lib}/body;
    proxy_temp_path {lib}/proxy;
    fastcgi_temp_path {lib}/fastcgi;
    uwsgi_temp_path {lib}/uwsgi;
    scgi_temp_path {lib}/scgi;
    include {paths.map(NGINX_DIR)}/sites-enabled/*;
}}
"""


# -- who does what ------------------------------------------------------------------------------
def load_device_ids(devices: int) -> list[str]:
    return device_ids(LOAD_PREFIX, devices)


def devices_per_broker(devices: int, per_broker: int) -> dict[str, list[str]]:
    """The first `per_broker` load devices homed on each broker (as the simulator homes them)."""
    chosen: dict[str, list[str]] = {broker: [] for broker in BROKERS}
    for device_id in load_device_ids(devices):
        mine = chosen[home_broker(device_id, BROKERS)]
        if len(mine) < per_broker:
            mine.append(device_id)
    return chosen


# -- accounting ---------------------------------------------------------------------------------
def parse_ledger(text: str) -> list[tuple[str, int, int]]:
    """(device, seq, ts_ms) per complete line of a simulator ledger; a torn last line (the
    writer was killed mid-line) is not an acknowledged reading and is left out."""
    return [(device, seq, ts_ms) for device, seq, ts_ms, _ in parse_ledger_brokers(text)]


def parse_ledger_brokers(text: str) -> list[tuple[str, int, int, str]]:
    """(device, seq, ts_ms, broker that acknowledged it) per complete line; lines written
    before the ledger named the broker give ""."""
    entries = []
    complete = text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        parts = line.split()
        if len(parts) in (3, 4) and parts[1].isdigit() and parts[2].isdigit():
            broker = parts[3] if len(parts) == 4 else ""
            entries.append((parts[0], int(parts[1]), int(parts[2]), broker))
    return entries


@dataclasses.dataclass(frozen=True)
class Tally:
    published: int  # acknowledged by the broker (the simulator's ledger)
    stored: int  # distinct readings stored for those devices
    lost: int  # acknowledged, never stored
    doubled: int  # stored copies beyond the first
    stored_unacknowledged: int  # stored, but the device never got its PUBACK (in flight)
    devices_with_losses: int


def tally(acknowledged: Iterable[tuple[str, int]], stored: Iterable[tuple[str, int, int]]) -> Tally:
    """Per device and message (device, seq): `acknowledged` from the ledger, `stored` as
    (device, seq, copies) from the database."""
    acked = Counter(acknowledged)
    copies = {(device, seq): count for device, seq, count in stored}
    lost = [key for key in acked if key not in copies]
    return Tally(
        published=len(acked),
        stored=len(copies),
        lost=len(lost),
        doubled=sum(count - 1 for count in copies.values() if count > 1),
        stored_unacknowledged=sum(1 for key in copies if key not in acked),
        devices_with_losses=len({device for device, _ in lost}),
    )


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without an event at one of `times`."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))
