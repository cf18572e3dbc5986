"""The registry: organisations, devices and the backend's broker accounts.

The database is the single source of truth for who may connect to the broker; the broker auth
sync (fieldhub.broker.auth_sync) turns these rows into Mosquitto's password and ACL files. Both
the CLI and the web app's admin pages go through these functions, so validation and the
"secret shown once" rule hold wherever a device is created."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fieldhub.core import tombstones
from fieldhub.core.brokers import home_broker
from fieldhub.core.config import configured_broker_names
from fieldhub.core.db import Conn, Queries
from fieldhub.core.passwords import generate_secret, hash_secret, verify_secret

QUERIES = Queries(Path(__file__).with_name("registry.sql"))

DEVICE_ID_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
ORG_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 128


class RegistryError(ValueError):
    """A registry request that cannot be carried out; the message is for the person."""


class NotFound(RegistryError):
    pass


@dataclasses.dataclass(frozen=True)
class DeviceCredentials:
    device_id: str
    username: str
    password: str  # shown once, never stored
    broker: str


def check_device_id(device_id: str) -> str:
    """Refuse ids the device contract forbids, saying what is wrong with them.

    The id is also the MQTT username, client id and a topic level, so MQTT's wildcards and
    level separator would let one device's ACL pattern match another device's topics."""
    return _check_name(device_id, "device id", 64)


def check_service_account_name(username: str) -> str:
    """Backend broker accounts are `svc.<name>`: the dot keeps them apart from device ids."""
    if not username.startswith("svc."):
        raise RegistryError(f"service account {username!r} must start with 'svc.'")
    _check_name(username.removeprefix("svc."), f"service account {username!r}: name", 60)
    return username


ACL_ACCESS = ("read", "write", "readwrite", "deny")


def check_acl_rule(rule: str) -> str:
    """One service-account rule, `<access> <topic filter>`, as Mosquitto's acl_file reads it.

    The rule is written into the broker's ACL file verbatim, so a newline or a malformed filter
    could smuggle in rules for other accounts; both are refused."""
    access, _, topic = rule.partition(" ")
    if access not in ACL_ACCESS:
        raise RegistryError(f"ACL rule {rule!r} must start with one of {', '.join(ACL_ACCESS)}")
    if not topic or len(topic) > 512 or any(c.isspace() or c == "\0" for c in topic):
        raise RegistryError(
            f"ACL rule {rule!r}: the topic filter must be 1-512 characters without whitespace"
        )
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise RegistryError(f"ACL rule {rule!r}: a wildcard must be a whole topic level")
        if level == "#" and index != len(levels) - 1:
            raise RegistryError(f"ACL rule {rule!r}: '#' must be the last topic level")
    return rule


def _check_name(value: str, what: str, limit: int) -> str:
    if not value:
        raise RegistryError(f"{what} must not be empty")
    if len(value) > limit:
        raise RegistryError(f"{what} is {len(value)} characters long; the limit is {limit}")
    bad = sorted({c for c in value if not DEVICE_ID_PATTERN.fullmatch(c)})
    if bad:
        shown = ", ".join(_describe_char(c) for c in bad)
        raise RegistryError(
            f"{what} {value!r} contains {shown}; use only lowercase letters, digits, '_' and '-'"
        )
    return value


def _describe_char(char: str) -> str:
    if char in "+#":
        return f"{char!r} (an MQTT wildcard)"
    if char == "/":
        return "'/' (the MQTT topic level separator)"
    if char.isspace():
        return f"whitespace {char!r}"
    if char.isupper():
        return f"{char!r} (uppercase)"
    return repr(char)


def check_org_name(name: str) -> str:
    if not ORG_NAME_PATTERN.fullmatch(name):
        raise RegistryError(
            f"organisation name {name!r} must be 1-64 characters of lowercase letters, digits, "
            "'_' and '-', starting with a letter or digit"
        )
    return name


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """`k=v` strings from the command line or a CSV cell into a label dict."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RegistryError(f"label {pair!r} must look like key=value")
        labels[key.strip()] = value.strip()
    return check_labels(labels)


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise RegistryError(f"a device has at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_PATTERN.fullmatch(key):
            raise RegistryError(f"label key {key!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise RegistryError(
                f"label {key!r} must be a string of at most {MAX_LABEL_VALUE} characters"
            )
    return dict(labels)


def create_org(conn: Conn, name: str, display_name: str | None = None) -> dict[str, Any]:
    check_org_name(name)
    try:
        with conn.transaction():
            row = conn.execute(
                QUERIES["insert_org"], {"name": name, "display_name": display_name or name}
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise RegistryError(f"organisation {name!r} already exists") from None
    assert row is not None
    return dict(row)


def get_org(conn: Conn, name: str) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_org"], {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no organisation named {name!r}")
    return dict(row)


def list_orgs(conn: Conn) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["list_orgs"])]


def create_device(
    conn: Conn,
    device_id: str,
    *,
    org: str,
    display_name: str = "",
    labels: Mapping[str, str] | None = None,
    broker: str | None = None,
    password_hash: str | None = None,
    secret: str | None = None,
) -> DeviceCredentials:
    """Register a device and return its credentials; the secret is not kept anywhere.

    Without `broker` the device is homed on one of the configured brokers by its id
    (fieldhub.core.brokers). `password_hash`/`secret` let bulk provisioning hash in parallel
    processes beforehand."""
    check_device_id(device_id)
    broker = broker or home_broker(device_id, configured_broker_names())
    org_row = get_org(conn, org)
    if secret is None:
        secret = generate_secret()
        password_hash = None
    params = {
        "device_id": device_id,
        "org_id": org_row["id"],
        "display_name": display_name,
        "labels": Jsonb(check_labels(labels or {})),
        "broker": broker,
        "password_hash": password_hash or hash_secret(secret),
    }
    try:
        with conn.transaction():
            conn.execute(QUERIES["insert_device"], params)
    except psycopg.errors.UniqueViolation:
        raise RegistryError(f"device {device_id!r} already exists") from None
    return DeviceCredentials(device_id, device_id, secret, broker)


def get_device(conn: Conn, device_id: str) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_device"], {"device_id": device_id}).fetchone()
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    return dict(row)


def list_devices(conn: Conn, *, org: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["list_devices"], {"org": org, "limit": limit})]


def set_enabled(conn: Conn, device_id: str, enabled: bool) -> None:
    with conn.transaction():
        if (
            conn.execute(
                QUERIES["set_device_enabled"], {"device_id": device_id, "enabled": enabled}
            ).fetchone()
            is None
        ):
            raise NotFound(f"no device {device_id!r}")


def rotate_secret(conn: Conn, device_id: str) -> DeviceCredentials:
    secret = generate_secret()
    with conn.transaction():
        row = conn.execute(
            QUERIES["set_device_secret"],
            {"device_id": device_id, "password_hash": hash_secret(secret)},
        ).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id!r}")
    broker = get_device(conn, device_id)["broker"]
    return DeviceCredentials(device_id, device_id, secret, broker)


def delete_device(conn: Conn, device_id: str) -> int:
    """Delete a device and write its tombstone in the same short transaction; returns the
    deleted device key.

    The device's data belongs to its key, which no later device (of the same id, in any
    organisation) ever gets, so none of it is reachable from the moment of the commit. What
    the brokers still hold (its login, retained commands and twin, its stored session, messages
    on their way to the bridges) is worked off per broker from the tombstone, and a new device
    with the same id is let onto a broker only after that (tombstone_steps.py, docs/devices.md
    "Deleting a device"). The readings, rollups and dead letters are purged later by the
    worker in bounded batches: a DELETE through the hypertables here would hold up ingest.
    Measured (tests/analysis/test_purge_deleted.py, FIELDHUB_TEST_DELETE_READINGS=1000000,
    on the shared 2-core test machine): the delete of a device with a million readings took
    30 ms, and another device's ingest batch beside an open delete or a running purge took
    15-16 ms, i.e. it waited on nothing."""
    with conn.transaction():
        key = tombstones.delete_device(conn, device_id, configured_broker_names() or ("broker-1",))
    if key is None:
        raise NotFound(f"no device {device_id!r}")
    return key


# A gateway's ACL block holds a rule per contract topic per child, and Mosquitto tries a
# client's rules one by one on every publish and delivery; docs/devices.md ("Gateways") has
# what 500 children cost per message.
MAX_CHILDREN_PER_GATEWAY = 500


def attach_gateway(
    conn: Conn, device_id: str, gateway_id: str, *, org_id: int | None = None
) -> dict[str, Any]:
    """Attach `device_id` to `gateway_id`; the gateway may then act for it at the broker.

    Both must be of one organisation (and of `org_id` when given: a device of another one is
    reported as unknown), and one level only: a gateway is not attached to another, and an
    attached device is not a gateway. They may be homed on different brokers: every device's
    commands and twin are retained on every broker (fieldhub.bridge.commands), so the gateway
    finds its children's wherever it is connected. Attaching a device to another gateway
    moves it; attaching it again to the same one changes nothing. Returns the child's row."""
    if device_id == gateway_id:
        raise RegistryError(f"device {device_id!r} cannot be its own gateway")
    pair = {"device_ids": [device_id, gateway_id], "org_id": org_id}
    with conn.transaction():
        locked = {row["device_id"] for row in conn.execute(QUERIES["lock_gateway_pair"], pair)}
        rows = {
            row["device_id"]: row
            for row in conn.execute(QUERIES["gateway_pair"], pair).fetchall()
            if row["device_id"] in locked
        }
        for wanted in (device_id, gateway_id):
            if wanted not in rows:
                raise NotFound(f"no device {wanted!r}")
        child, gateway = rows[device_id], rows[gateway_id]
        if child["gateway_id"] == gateway_id:
            return get_device(conn, device_id)
        if child["org_id"] != gateway["org_id"]:
            raise RegistryError(
                f"device {device_id!r} is in organisation {child['org']!r} and {gateway_id!r} "
                f"in {gateway['org']!r}; a gateway acts only for devices of its own organisation"
            )
        if gateway["gateway_id"] is not None:
            raise RegistryError(
                f"{gateway_id!r} is itself attached to gateway {gateway['gateway_id']!r}; "
                "gateways do not nest"
            )
        if child["has_children"]:
            raise RegistryError(
                f"{device_id!r} is the gateway of other devices; detach them first "
                "(gateways do not nest)"
            )
        count = conn.execute(QUERIES["count_children"], {"gateway_id": gateway_id}).fetchone()
        if count is not None and int(count["children"]) >= MAX_CHILDREN_PER_GATEWAY:
            raise RegistryError(
                f"gateway {gateway_id!r} already has {count['children']} devices attached; "
                f"the limit is {MAX_CHILDREN_PER_GATEWAY}"
            )
        conn.execute(QUERIES["set_gateway"], {"device_id": device_id, "gateway_id": gateway_id})
    return get_device(conn, device_id)


def detach_gateway(conn: Conn, device_id: str, *, org_id: int | None = None) -> str | None:
    """Detach a device from its gateway; returns the gateway it had (None: it had none)."""
    with conn.transaction():
        row = conn.execute(
            QUERIES["detach_gateway"], {"device_id": device_id, "org_id": org_id}
        ).fetchone()
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    gateway: str | None = row["gateway_id"]
    return gateway


def gateway_children(conn: Conn, gateway_id: str) -> list[dict[str, Any]]:
    """The devices attached to a gateway (id and whether enabled), by id."""
    return [dict(r) for r in conn.execute(QUERIES["gateway_children"], {"gateway_id": gateway_id})]


def ensure_service_account(conn: Conn, username: str, acl: Sequence[str], password: str) -> bool:
    """Create or update one of the backend's broker accounts with the least rights it needs.

    An account that already has these rules and this password is left as it is (False): a new
    hash of the same password would still change the broker's password file and cost a reload
    that re-checks every connected client."""
    check_service_account_name(username)
    for rule in acl:
        check_acl_rule(rule)
    current = conn.execute(QUERIES["get_service_account"], {"username": username}).fetchone()
    if (
        current is not None
        and list(current["acl"]) == list(acl)
        and verify_secret(password, current["password_hash"])
    ):
        return False
    with conn.transaction():
        conn.execute(
            QUERIES["upsert_service_account"],
            {"username": username, "password_hash": hash_secret(password), "acl": list(acl)},
        )
    return True


# The bridges' broker accounts are this prefix plus the instance number: svc.bridge-1, ...
BRIDGE_ACCOUNT_BASE = "svc.bridge"


def bridge_account(instance: int, base: str = BRIDGE_ACCOUNT_BASE) -> str:
    """The broker account of bridge instance `instance`.

    The services listener forces the client id to the username, so the account *is* the name
    of the instance's durable session: one account per instance, or two processes would take
    the session from each other at every reconnect. The instances of one deployment share the
    password (`base` and the password come from MQTT_URL); they are one program with one set of
    rights, and what must differ is the session. Across brokers one instance keeps its name:
    each broker has its own sessions."""
    if instance < 1:
        raise RegistryError(f"a bridge instance is numbered from 1, not {instance}")
    name = f"{base}-{instance}"
    check_service_account_name(name)
    return name


def ensure_bridge_accounts(
    conn: Conn, password: str, instances: int, *, base: str = BRIDGE_ACCOUNT_BASE
) -> list[str]:
    """Accounts for bridge instances 1..`instances`, each with BRIDGE_ACL and `password`.

    The bare `base` account (one account shared by every instance, before client ids were
    bound to accounts) is removed: its rights are the bridge's and nothing uses it any more.
    Accounts of higher instances are kept; a process may still run as one."""
    names = [bridge_account(n, base) for n in range(1, instances + 1)]
    for name in names:
        ensure_service_account(conn, name, BRIDGE_ACL, password)
    delete_service_account(conn, base)
    return names


def delete_service_account(conn: Conn, username: str) -> bool:
    with conn.transaction():
        return (
            conn.execute(QUERIES["delete_service_account"], {"username": username}).fetchone()
            is not None
        )


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """One device to provision in bulk, already validated."""

    device_id: str
    display_name: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RowError:
    line: int
    reason: str


def parse_device_rows(
    rows: Iterable[tuple[int, Sequence[str]]],
) -> tuple[list[tuple[int, DeviceSpec]], list[RowError]]:
    """Validate import rows `(line number, [device_id, name, "k=v;k=v"])`.

    A bad row is reported with its line and reason and does not stop the others; a header row
    (first cell `device_id`) and blank rows are skipped."""
    good: list[tuple[int, DeviceSpec]] = []
    errors: list[RowError] = []
    first_seen: dict[str, int] = {}
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        if not good and not errors and cells[0].strip().lower() == "device_id":
            continue
        try:
            if len(cells) > 3:
                raise RegistryError(
                    f"{len(cells)} columns; expected device_id[,name[,labels as k=v;k=v]]"
                )
            device_id = check_device_id(cells[0].strip())
            name = cells[1].strip() if len(cells) > 1 else ""
            label_cell = cells[2].strip() if len(cells) > 2 else ""
            labels = parse_labels([p for p in label_cell.split(";") if p.strip()])
            if device_id in first_seen:
                raise RegistryError(
                    f"device id {device_id!r} appears again (first on line {first_seen[device_id]})"
                )
        except RegistryError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        first_seen[device_id] = line
        good.append((line, DeviceSpec(device_id, name, labels)))
    return good, errors


def provision_devices(
    conn: Conn,
    org: str,
    devices: Sequence[tuple[DeviceSpec, str]],
    *,
    broker: str | None = None,
) -> set[str]:
    """Insert validated devices with their precomputed password hashes in one transaction.

    Each device is homed on `broker`, or without it on a configured broker chosen by its id
    (as in create_device). Returns the ids actually inserted; an id that already exists is
    skipped (the caller reports it), so one taken id does not sink a whole import. COPY into
    a temporary table keeps 10,000 devices to one round trip, and the registry trigger fires
    once for the statement."""
    org_row = get_org(conn, org)
    brokers = configured_broker_names()
    with conn.transaction():
        conn.execute(QUERIES["create_import_table"])
        with conn.cursor().copy(QUERIES["copy_import_table"]) as copy:
            for spec, password_hash in devices:
                copy.write_row(
                    (
                        spec.device_id,
                        spec.display_name,
                        Jsonb(dict(spec.labels)),
                        broker or home_broker(spec.device_id, brokers),
                        password_hash,
                    )
                )
        inserted = conn.execute(
            QUERIES["insert_imported_devices"], {"org_id": org_row["id"]}
        ).fetchall()
    return {row["device_id"] for row in inserted}


def list_service_accounts(conn: Conn) -> list[dict[str, Any]]:
    """Backend broker accounts and their rules (never their hashes)."""
    return [dict(r) for r in conn.execute(QUERIES["list_service_accounts"])]


# The rights of each backend account: exactly what its code does, nothing more.
BRIDGE_ACL = (
    "read devices/+/telemetry",
    "read devices/+/telemetry/senml",
    "read devices/+/status",
    "read devices/+/commands/+/ack",
    # Read: the dispatcher lists a reconnected broker's retained commands to clear the ones
    # no longer live (fieldhub.bridge.app.retained_command_topics).
    "readwrite devices/+/commands/+",
    "read devices/+/twin/reported",
    "write devices/+/twin/desired",
    "write devices/+/twin/delta",
    "read $SYS/broker/publish/messages/dropped",
    "read $SYS/broker/clients/connected",
    # Deleted devices' markers: the dispatcher sends them, every bridge session reads them.
    f"readwrite {tombstones.MARKER_FILTER}",
)
LOADGEN_ACL = ("write devices/+/telemetry",)
