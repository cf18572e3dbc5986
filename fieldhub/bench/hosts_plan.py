"""The multi-host layout of `fieldhub bench hosts`, as pure rules: which host runs which roles,
the command each role runs (as its systemd unit's ExecStart would), each host's env file, and
the accounting of what the devices published against what was stored.

Nothing here starts, reads or writes anything; fieldhub/bench/hosts.py applies it to a
fieldhub/bench/netlab.py lab.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from fieldhub.core.brokers import home_broker
from fieldhub.sim.simulate import device_ids

SUBNET = "198.18.0.0/24"  # inside 198.18.0.0/15, the range reserved for benchmarks
BROKERS = ("broker-1", "broker-2")
BRIDGE_HOSTS = ("bridge-1", "bridge-2")
WEB_HOSTS = ("web-1", "web-2")
LOAD_ORG = "load"
LOAD_PREFIX = "load"
BRIDGE_ACCOUNT = "svc.bridge"

# Ports on each host's own address (every host has the whole port space to itself).
PG_PORT = 5432
MQTT_LOOPBACK_PORT = 1883  # plain MQTT, the broker host's loopback only
MQTTS_PORT = 8883  # devices, TLS
MQTT_SERVICE_PORT = 1884  # the bridges' service listener
WEB_PORT = 8000  # gunicorn, behind nginx
HTTPS_PORT = 443  # nginx
BRIDGE_METRICS_PORT = 9108  # + the broker's index on a bridge host

# Each role's command, written as its systemd unit's ExecStart line. {venv} is the install's
# virtualenv, {home} the host's FIELDHUB_HOME (data directory), {address} its address; the
# rest come from the role's parameters. This table is the one place to change when the units
# in deploy/systemd/ define the commands.
ROLE_COMMANDS: Mapping[str, str] = {
    "postgres": "{pg_bindir}/postgres -D {home}/postgres/pgdata",
    "mosquitto": "{mosquitto} -c {home}/mosquitto/mosquitto.conf",
    "auth-sync": "{venv}/bin/fieldhub auth-sync --broker {broker}",
    "bridge": "{venv}/bin/fieldhub bridge --instance {instance} --broker {broker} "
    "--metrics-port {metrics_port}",
    "worker": "{venv}/bin/fieldhub worker",
    "web": "{venv}/bin/fieldhub web --bind {address}:" + str(WEB_PORT),
    "nginx": "{nginx} -c {home}/nginx/nginx.conf -e stderr",
    "simulate": "{venv}/bin/fieldhub simulate --devices {devices} --interval {interval} "
    "--org {org} --prefix {prefix} --ledger {home}/ledger",
    # One-shot: applied from the operator's host before anything else starts.
    "migrate": "{venv}/bin/fieldhub migrate",
}
# The Debian packages' own units for the servers fieldhub does not ship.
SERVER_UNITS: Mapping[str, str] = {
    "postgres": "postgresql",
    "mosquitto": "mosquitto",
    "nginx": "nginx",
}
# Roles whose unit names a User=; the others start as root (Mosquitto and nginx drop to their
# own users themselves).
ROLE_USERS: Mapping[str, str] = {"postgres": "postgres"}


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def unit(self) -> str:
        """What systemd would call it: fieldhub-bridge@1-broker-2 and the like."""
        if self.name in SERVER_UNITS:
            return SERVER_UNITS[self.name]
        instance = "-".join(value for key, value in self.params if key in ("instance", "broker"))
        return f"fieldhub-{self.name}" + (f"@{instance}" if instance else "")

    def command(self, values: Mapping[str, str]) -> list[str]:
        """The argv of this role on a host; `values` has venv, home, address and binaries."""
        try:
            line = ROLE_COMMANDS[self.name].format(**{**values, **dict(self.params)})
        except KeyError as exc:
            raise ValueError(f"role {self.name} needs a value for {exc}") from None
        return shlex.split(line)


@dataclasses.dataclass(frozen=True)
class HostPlan:
    name: str
    roles: tuple[Role, ...]


def layout(*, devices: int, interval_s: float) -> tuple[HostPlan, ...]:
    """The hosts in start order: database, brokers, bridges (each consuming from both brokers),
    worker, web, nginx on a host of its own (it is what users reach; a web host can die under
    it), the load (simulated devices), and ops, the operator's and the user's machine."""

    def bridge(instance: int) -> tuple[Role, ...]:
        return tuple(
            Role(
                "bridge",
                (
                    ("instance", str(instance)),
                    ("broker", broker),
                    ("metrics_port", str(BRIDGE_METRICS_PORT + index)),
                ),
            )
            for index, broker in enumerate(BROKERS)
        )

    return (
        HostPlan("db", (Role("postgres"),)),
        *(
            HostPlan(broker, (Role("mosquitto"), Role("auth-sync", (("broker", broker),))))
            for broker in BROKERS
        ),
        *(HostPlan(name, bridge(n)) for n, name in enumerate(BRIDGE_HOSTS, start=1)),
        HostPlan("worker", (Role("worker"),)),
        *(HostPlan(name, (Role("web"),)) for name in WEB_HOSTS),
        HostPlan("nginx", (Role("nginx"),)),
        HostPlan(
            "load",
            (
                Role(
                    "simulate",
                    (
                        ("devices", str(devices)),
                        ("interval", f"{interval_s:g}"),
                        ("org", LOAD_ORG),
                        ("prefix", LOAD_PREFIX),
                    ),
                ),
            ),
        ),
        HostPlan("ops", ()),
    )


# -- env files ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Secrets:
    database_password: str
    bridge_password: str
    web_secret_key: str


def host_env(
    host: str, addresses: Mapping[str, str], secrets: Secrets, home: str
) -> dict[str, str]:
    """The env file of `host` (its /etc/fieldhub/fieldhub.env). Hosts that run no fieldhub
    process (database, nginx) get only their data directory."""
    env = {"FIELDHUB_HOME": home}
    if host in ("db", "nginx"):
        return env
    db_password = quote(secrets.database_password, safe="")
    bridge_password = quote(secrets.bridge_password, safe="")
    first = addresses[BROKERS[0]]
    env.update(
        FIELDHUB_ENV="production",
        DATABASE_URL=f"postgresql://fieldhub:{db_password}@{addresses['db']}:{PG_PORT}/fieldhub",
        MQTT_URL=f"mqtt://{BRIDGE_ACCOUNT}:{bridge_password}@{first}:{MQTT_SERVICE_PORT}",
        MQTT_DEVICE_URL=f"mqtts://{first}:{MQTTS_PORT}",
        FIELDHUB_BROKERS=",".join(f"{b}=mqtts://{addresses[b]}:{MQTTS_PORT}" for b in BROKERS),
        FIELDHUB_BROKER_SERVICE_URLS=",".join(
            f"{b}=mqtt://{addresses[b]}:{MQTT_SERVICE_PORT}" for b in BROKERS
        ),
        FIELDHUB_SECRET_KEY=secrets.web_secret_key,
        FIELDHUB_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    if host in BROKERS:
        env.update(
            FIELDHUB_MOSQUITTO_DIR=f"{home}/mosquitto",
            FIELDHUB_MOSQUITTO_PID_FILE=f"{home}/mosquitto/mosquitto.pid",
            FIELDHUB_ACL_DIR=f"{home}/acl.d",
        )
    if host in WEB_HOSTS:
        env.update(FIELDHUB_WEB_HOST=addresses[host], FIELDHUB_WEB_PORT=str(WEB_PORT))
    return env


def render_env_file(env: Mapping[str, str]) -> str:
    lines = ["# fieldhub settings of this host (systemd EnvironmentFile=)"]
    for key, value in env.items():
        if any(c in value for c in '"\\\n'):
            raise ValueError(f"{key}: a value with quotes, backslashes or newlines")
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: comments and blank lines
    skipped, one pair of surrounding quotes removed."""
    env = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ValueError(f"line {number}: {raw!r} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


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
    entries = []
    complete = text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            entries.append((parts[0], int(parts[1]), int(parts[2])))
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
