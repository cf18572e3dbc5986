"""Broker security: the registry rendered into Mosquitto's files, and what the broker then
enforces against real clients.

The render tests need nothing; the rest run against the session's Mosquitto, whose password and
ACL files (one pair for the device listeners, one for the services listener) each test rewrites
from its own database (so every device id here is unique)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.broker.auth_sync import (
    BASE_ACL,
    OperatorRules,
    check_operator_rules,
    operator_rule_files,
    render_device_acl,
    render_password_file,
    render_service_acl,
    split_operator_rules,
    sync_once,
    write_atomically,
)
from fieldhub.broker.mosquitto import (
    AUTH_FILES,
    DEVICE_ACL_FILE,
    DEVICE_PASSWORD_FILE,
    SERVICE_ACL_FILE,
    SERVICE_PASSWORD_FILE,
    MosquittoBroker,
)
from fieldhub.core import registry
from fieldhub.core.passwords import generate_secret
from tests.support import (
    BRIDGE_ACCOUNT,
    DeviceClient,
    TestStack,
    stop_process,
    unique_id,
    wait_for,
)

REVOCATION_DEADLINE_S = 2.0


# -- rendering (pure) -------------------------------------------------------------------


def test_password_file_has_one_line_per_account() -> None:
    text = render_password_file([("dev-a", "$7$1000$s$h"), ("svc.bridge", "$7$1000$t$i")])
    assert text == "dev-a:$7$1000$s$h\nsvc.bridge:$7$1000$t$i\n"
    assert render_password_file([]) == ""


def _rule_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


DASH_FILE = OperatorRules(
    "10-dash.acl",
    devices="pattern read config/%u\n",
    services="user svc.dash\ntopic read devices/+/status\n",
)


def test_device_acl_has_the_device_patterns_and_the_operators_device_rules_only() -> None:
    text = render_device_acl("pattern read devices/%u/commands/+\n", [DASH_FILE])
    assert _rule_lines(text) == ["pattern read devices/%u/commands/+", "pattern read config/%u"]
    assert "# --- operator rules from acl.d/10-dash.acl" in text


def test_service_acl_has_the_accounts_then_the_operators_service_rules_only() -> None:
    text = render_service_acl(
        [("svc.bridge", ["read devices/+/telemetry"]), ("svc.loadgen", [])], [DASH_FILE]
    )
    assert _rule_lines(text) == [
        "user svc.bridge",
        "topic read devices/+/telemetry",
        "user svc.loadgen",
        "user svc.dash",
        "topic read devices/+/status",
    ]
    assert "pattern" not in text
    assert "# --- operator rules from acl.d/10-dash.acl" in text


def test_an_operator_file_with_nothing_for_a_listener_leaves_no_trace_there() -> None:
    only_services = OperatorRules("20-x.acl", devices="# about x\n", services="user svc.x\n")
    assert "20-x.acl" not in render_device_acl("", [only_services])
    assert "20-x.acl" in render_service_acl([], [only_services])


def test_operator_rules_are_split_by_listener() -> None:
    devices, services = split_operator_rules(
        "# shared header\n"
        "pattern read config/%u\n"
        "user svc.dash\n"
        "topic read devices/+/status\n"
        "pattern write hello/%u\n"  # patterns are global in Mosquitto, wherever they stand
        "\n"
        "user dev-42\n"
        "topic read firmware/special\n"
        "user svc.other\n"
        "topic write devices/+/commands/+\n"
    )
    assert devices.splitlines() == [
        "# shared header",
        "pattern read config/%u",
        "pattern write hello/%u",
        "user dev-42",
        "topic read firmware/special",
    ]
    assert services.splitlines() == [
        "# shared header",
        "user svc.dash",
        "topic read devices/+/status",
        "",
        "user svc.other",
        "topic write devices/+/commands/+",
    ]


def test_base_acl_grants_devices_exactly_the_contract_topics() -> None:
    rules = [
        line.split(None, 1)[1]
        for line in BASE_ACL.read_text().splitlines()
        if line.startswith("pattern ")
    ]
    assert sorted(rules) == sorted(
        [
            "write devices/%u/telemetry",
            "write devices/%u/telemetry/senml",
            "write devices/%u/status",
            "write devices/%u/commands/+/ack",
            "read devices/%u/commands/+",
            "write devices/%u/twin/reported",
            "read devices/%u/twin/desired",
            "read devices/%u/twin/delta",
        ]
    )
    assert not [line for line in BASE_ACL.read_text().splitlines() if line.startswith("topic")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("topic read #\n", "line 1: 'topic' before any 'user' line"),
        ("# c\n\npattern read x/%u\ntopic read y\n", "line 4: 'topic' before any 'user'"),
        ("user svc.a\nbogus thing\n", "line 2: expected"),
        ("user\n", "line 1: expected"),
    ],
)
def test_unsafe_operator_rules_are_refused(text: str, problem: str) -> None:
    problems = check_operator_rules(text)
    assert any(problem in p for p in problems), problems


def test_operator_files_are_read_in_name_order_and_unsafe_ones_left_out(tmp_path: Path) -> None:
    (tmp_path / "20-b.acl").write_text("user svc.b\ntopic read b\n")
    (tmp_path / "10-a.acl").write_text("# a\nuser svc.a\ntopic read a\npattern read p/%u\n")
    (tmp_path / "15-bad.acl").write_text("topic read #\n")
    (tmp_path / "notes.txt").write_text("topic read #\n")
    files = operator_rule_files(tmp_path)
    assert [rules.name for rules in files] == ["10-a.acl", "20-b.acl"]
    assert _rule_lines(files[0].devices) == ["pattern read p/%u"]
    assert _rule_lines(files[0].services) == ["user svc.a", "topic read a"]


def test_write_atomically_is_private_and_skips_unchanged_content(tmp_path: Path) -> None:
    target = tmp_path / "acl"
    assert write_atomically(target, "one\n")
    assert target.stat().st_mode & 0o777 == 0o600
    assert not write_atomically(target, "one\n")
    assert write_atomically(target, "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acl"]


# -- the real broker --------------------------------------------------------------------

pytest_integration = pytest.mark.integration


def _bridge(stack: TestStack) -> DeviceClient:
    """A connection with the bridge's rights, on an account of its own."""
    client = DeviceClient(
        stack.broker.mqtt_services, stack.service_account("svc.observer"), stack.bridge_password
    )
    client.connect()
    return client


def _device(stack: TestStack, device_id: str, secret: str, **kwargs: object) -> DeviceClient:
    client = DeviceClient(stack.broker.mqtt_devices, device_id, secret, **kwargs)  # type: ignore[arg-type]
    client.connect()
    return client


@pytest.fixture
def closing() -> Iterator[list[DeviceClient]]:
    clients: list[DeviceClient] = []
    yield clients
    for client in clients:
        client.close()


@pytest_integration
def test_device_receives_nothing_but_its_own_commands_whatever_it_subscribes(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    a, b = unique_id("a"), unique_id("b")
    secrets = stack.create_devices([a, b])
    dev_b = _device(stack, b, secrets[b])
    closing.append(dev_b)
    dev_b.subscribe(f"devices/{b}/commands/+")
    dev_b.publish(f"devices/{b}/status", b"online", retain=True)
    bridge = _bridge(stack)
    closing.append(bridge)
    # Positive controls: what A must not see is really there for an account allowed to read it.
    bridge.subscribe(f"devices/{b}/status")
    bridge.subscribe("$SYS/broker/clients/connected")
    expected = {f"devices/{b}/status", "$SYS/broker/clients/connected"}
    wait_for(
        lambda: {m.topic for m in bridge.received} >= expected,
        what="the bridge to get B's retained status and $SYS",
    )

    dev_a = _device(stack, a, secrets[a])
    closing.append(dev_a)
    for topic in ("#", "devices/+/commands/+", f"devices/{b}/#", "$SYS/#"):
        dev_a.subscribe(topic)
    bridge.publish(f"devices/{b}/commands/cmd-b", b'{"name":"reboot"}')
    wait_for(lambda: dev_b.received, what="B to receive its own command")
    # Published after B's: once A has its own command, anything of B's would have arrived too.
    bridge.publish(f"devices/{a}/commands/cmd-a", b'{"name":"ping"}')
    wait_for(
        lambda: any(m.topic == f"devices/{a}/commands/cmd-a" for m in dev_a.received),
        what="A to receive its own command",
    )
    foreign = [m.topic for m in dev_a.received if not m.topic.startswith(f"devices/{a}/")]
    assert foreign == []
    assert [m.topic for m in dev_b.received] == [f"devices/{b}/commands/cmd-b"]
    dev_b.publish(f"devices/{b}/status", b"", retain=True)  # the broker outlives this test


@pytest_integration
def test_device_cannot_publish_on_another_devices_topics(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    a, b = unique_id("a"), unique_id("b")
    secrets = stack.create_devices([a, b])
    bridge = _bridge(stack)
    closing.append(bridge)
    for topic in (
        "devices/+/telemetry",
        "devices/+/telemetry/senml",
        "devices/+/status",
        "devices/+/commands/+/ack",
        "devices/+/commands/+",
        "devices/+/twin/reported",
        "devices/+/twin/desired",
        "devices/+/twin/delta",
    ):
        bridge.subscribe(topic)
    dev_a = _device(stack, a, secrets[a])
    closing.append(dev_a)
    for topic in (
        f"devices/{b}/telemetry",
        f"devices/{b}/telemetry/senml",
        f"devices/{b}/status",
        f"devices/{b}/commands/c1/ack",
        f"devices/{b}/commands/c1",
        f"devices/{a}/commands/c1",  # a device cannot command itself either
        f"devices/{b}/twin/reported",
        f"devices/{a}/twin/desired",  # nor set its own desired state
        f"devices/{a}/twin/delta",
    ):
        dev_a.publish(topic, b'{"spoofed":true}')
    dev_a.publish(f"devices/{a}/telemetry", b'{"marker":1}')
    wait_for(
        lambda: any(m.topic == f"devices/{a}/telemetry" for m in bridge.received),
        what="the bridge to receive A's own telemetry",
    )
    # Retained messages of earlier tests on the shared broker are not this test's business.
    ours = [m.topic for m in bridge.received if a in m.topic or b in m.topic]
    assert ours == [f"devices/{a}/telemetry"]


@pytest_integration
def test_claiming_another_devices_client_id_gains_nothing(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    a, b = unique_id("a"), unique_id("b")
    secrets = stack.create_devices([a, b])
    dev_b = _device(stack, b, secrets[b], clean_start=False)
    closing.append(dev_b)
    dev_b.subscribe(f"devices/{b}/commands/+")
    impostor = DeviceClient(stack.broker.mqtt_devices, a, secrets[a], client_id=b)
    closing.append(impostor)
    # use_username_as_clientid turns the claimed id back into A's own.
    assert impostor.connect(raise_on_refusal=False)
    impostor.subscribe(f"devices/{b}/commands/+")
    bridge = _bridge(stack)
    closing.append(bridge)
    bridge.publish(f"devices/{b}/commands/after-impostor", b"{}")
    wait_for(lambda: dev_b.received, what="B, still connected, to receive its command")
    assert not dev_b.disconnected.is_set()
    assert impostor.received == []


@pytest_integration
def test_sync_writes_devices_and_service_accounts_to_separate_files(stack: TestStack) -> None:
    device_id = unique_id()
    stack.create_devices([device_id])
    files = {name: (stack.broker.auth_dir / name).read_text() for name in AUTH_FILES}
    assert [line.split(":")[0] for line in files[DEVICE_PASSWORD_FILE].splitlines()] == [device_id]
    assert [line.split(":")[0] for line in files[SERVICE_PASSWORD_FILE].splitlines()] == [
        BRIDGE_ACCOUNT
    ]
    assert "svc." not in files[DEVICE_ACL_FILE]
    assert f"user {BRIDGE_ACCOUNT}" in files[SERVICE_ACL_FILE]
    assert "pattern" not in files[SERVICE_ACL_FILE]


@pytest_integration
def test_device_credentials_are_refused_on_the_services_listener(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    a, b = unique_id("a"), unique_id("b")
    secrets = stack.create_devices([a, b])
    dev_b = _device(stack, b, secrets[b])
    closing.append(dev_b)
    dev_b.subscribe(f"devices/{b}/commands/+")
    # Sessions are broker-wide: were A admitted on the services listener with B's client id
    # (and that listener did not bind ids to accounts), it would get B's session.
    for client_id in (a, b):
        intruder = DeviceClient(stack.broker.mqtt_services, a, secrets[a], client_id=client_id)
        closing.append(intruder)
        assert not intruder.connect(raise_on_refusal=False)
    assert stack.can_login(a, secrets[a])  # the same credentials do work for devices
    bridge = _bridge(stack)
    closing.append(bridge)
    bridge.publish(f"devices/{b}/commands/still-there", b"{}")
    wait_for(lambda: dev_b.received, what="B, still connected, to receive its command")
    assert not dev_b.disconnected.is_set()


@pytest_integration
def test_service_account_is_refused_on_the_device_listeners(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    plain = DeviceClient(
        stack.broker.mqtt_devices, BRIDGE_ACCOUNT, stack.bridge_password, client_id=unique_id()
    )
    closing.append(plain)
    assert not plain.connect(raise_on_refusal=False)
    ca = stack.broker.tls_dir / "ca.crt"
    assert not _tls_connect(stack.broker, BRIDGE_ACCOUNT, stack.bridge_password, ca)
    # Positive control: the same credentials are good on the services listener.
    closing.append(_bridge(stack))


@pytest_integration
def test_service_account_with_a_new_password_is_disconnected_from_the_services_listener(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    old_password = generate_secret()
    registry.ensure_service_account(stack.conn, "svc.rotating", [], old_password)
    stack.sync()
    client = DeviceClient(stack.broker.mqtt_services, "svc.rotating", old_password)
    closing.append(client)
    wait_for(lambda: client.connect(raise_on_refusal=False), what="svc.rotating to log in")
    started = time.monotonic()
    registry.ensure_service_account(stack.conn, "svc.rotating", [], generate_secret())
    stack.sync()
    assert client.disconnected.wait(REVOCATION_DEADLINE_S), "still connected"
    assert time.monotonic() - started < REVOCATION_DEADLINE_S


@pytest_integration
@pytest.mark.parametrize("case", ["wrong password", "unknown user", "disabled", "anonymous"])
def test_bad_credentials_are_refused(stack: TestStack, case: str) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    assert stack.can_login(device_id, secret)
    if case == "wrong password":
        assert not stack.can_login(device_id, generate_secret())
    elif case == "unknown user":
        assert not stack.can_login(unique_id("ghost"), secret)
    elif case == "disabled":
        registry.set_enabled(stack.conn, device_id, False)
        stack.sync()
        assert not stack.can_login(device_id, secret)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        result: list[object] = []
        client.on_connect = lambda c, u, f, reason, p: result.append(reason)
        client.connect("127.0.0.1", stack.broker.mqtt_devices)
        client.loop_start()
        try:
            wait_for(lambda: result, what="CONNACK")
        finally:
            client.loop_stop()
        assert result[0].is_failure  # type: ignore[attr-defined]


def _revoke_and_time(
    stack: TestStack, change: str, device_id: str, secret: str, closing: list[DeviceClient]
) -> float:
    client = _device(stack, device_id, secret)
    closing.append(client)
    started = time.monotonic()
    if change == "disable":
        registry.set_enabled(stack.conn, device_id, False)
    elif change == "rotate":
        registry.rotate_secret(stack.conn, device_id)
    else:
        registry.delete_device(stack.conn, device_id)
    stack.sync()
    assert client.disconnected.wait(REVOCATION_DEADLINE_S), f"{change}: still connected"
    return time.monotonic() - started


@pytest_integration
@pytest.mark.parametrize("change", ["disable", "rotate", "delete"])
def test_revoked_device_is_disconnected_within_2_s_and_refused(
    stack: TestStack, change: str, closing: list[DeviceClient]
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    elapsed = _revoke_and_time(stack, change, device_id, secret, closing)
    assert elapsed < REVOCATION_DEADLINE_S
    assert not stack.can_login(device_id, secret)


@pytest_integration
def test_rotated_device_reconnects_with_its_new_secret(stack: TestStack) -> None:
    device_id = unique_id()
    old = stack.create_devices([device_id])[device_id]
    new = registry.rotate_secret(stack.conn, device_id).password
    stack.sync()
    assert wait_for(lambda: stack.can_login(device_id, new), timeout=REVOCATION_DEADLINE_S)
    assert not stack.can_login(device_id, old)


@pytest_integration
def test_operator_acl_files_are_merged_with_the_generated_rules(
    stack: TestStack, tmp_path: Path, closing: list[DeviceClient]
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    dash_password = generate_secret()
    registry.ensure_service_account(stack.conn, "svc.dashboard", [], dash_password)
    # One file for both listeners: the svc block goes to the services ACL, the pattern (an
    # extra topic for every device) to the device ACL.
    (tmp_path / "50-dashboard.acl").write_text(
        "# a read-only account for a dashboard, which also hands out device config\n"
        "user svc.dashboard\n"
        "topic read devices/+/status\n"
        "topic write config/+\n"
        "pattern read config/%u\n"
    )
    if sync_once(stack.conn, stack.broker.auth_dir, operator_dir=tmp_path):
        stack.broker.reload()
    dash = DeviceClient(stack.broker.mqtt_services, "svc.dashboard", dash_password)
    closing.append(dash)
    wait_for(lambda: dash.connect(raise_on_refusal=False), what="the dashboard account to log in")
    dash.subscribe("devices/+/status")
    dash.subscribe("devices/+/telemetry")
    device = _device(stack, device_id, secret)
    closing.append(device)
    device.subscribe(f"config/{device_id}")
    device.publish(f"devices/{device_id}/telemetry", b"{}")
    device.publish(f"devices/{device_id}/status", b"online")
    wait_for(
        lambda: any(device_id in m.topic for m in dash.received),
        what="the dashboard to receive the status",
    )
    # Published before the status, so it would have arrived first had it been allowed.
    assert [m.topic for m in dash.received if device_id in m.topic] == [
        f"devices/{device_id}/status"
    ]
    assert not [m for m in dash.received if "/telemetry" in m.topic]
    dash.publish(f"config/{device_id}", b'{"interval": 60}')
    wait_for(
        lambda: any(m.topic == f"config/{device_id}" for m in device.received),
        what="the device to receive its config through the operator's pattern",
    )


# -- the auth-sync process --------------------------------------------------------------


@pytest.fixture
def auth_sync_process(stack: TestStack, broker: MosquittoBroker) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "FIELDHUB_MOSQUITTO_DIR": str(broker.base_dir),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(broker.pid_file),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldhub.cli", "auth-sync"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


@pytest_integration
def test_auth_sync_process_admits_and_cuts_off_devices_within_2_s(
    stack: TestStack, auth_sync_process: subprocess.Popen[str], closing: list[DeviceClient]
) -> None:
    # The process needs a moment to start; a first device shows when it is following along.
    warmup = unique_id("warmup")
    warmup_secret = registry.create_device(stack.conn, warmup, org=stack.org).password
    wait_for(lambda: stack.can_login(warmup, warmup_secret), timeout=30, what="auth-sync to run")

    device_id = unique_id()
    created = time.monotonic()
    secret = registry.create_device(stack.conn, device_id, org=stack.org).password
    wait_for(
        lambda: stack.can_login(device_id, secret),
        timeout=REVOCATION_DEADLINE_S,
        what="a new device to be admitted",
    )
    assert time.monotonic() - created < REVOCATION_DEADLINE_S

    client = _device(stack, device_id, secret)
    closing.append(client)
    started = time.monotonic()
    registry.set_enabled(stack.conn, device_id, False)
    assert client.disconnected.wait(REVOCATION_DEADLINE_S)
    assert time.monotonic() - started < REVOCATION_DEADLINE_S
    assert not stack.can_login(device_id, secret)

    warm = _device(stack, warmup, warmup_secret)
    closing.append(warm)
    registry.rotate_secret(stack.conn, warmup)
    assert warm.disconnected.wait(REVOCATION_DEADLINE_S)
    assert not stack.can_login(warmup, warmup_secret)

    auth_sync_process.send_signal(signal.SIGTERM)
    assert auth_sync_process.wait(timeout=10) == 0
    assert auth_sync_process.stderr is not None
    assert "Traceback" not in auth_sync_process.stderr.read()


# -- TLS --------------------------------------------------------------------------------


def _tls_connect(broker: MosquittoBroker, username: str, password: str, ca: Path | None) -> bool:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    client.tls_set_context(context)
    result: list[object] = []
    client.on_connect = lambda c, u, f, reason, p: result.append(reason)
    client.connect("localhost", broker.mqtt_devices_tls)
    client.loop_start()
    try:
        wait_for(lambda: result, what="CONNACK over TLS")
    finally:
        client.disconnect()
        client.loop_stop()
    return not result[0].is_failure  # type: ignore[attr-defined]


@pytest_integration
def test_tls_listener_accepts_clients_that_trust_the_ca(stack: TestStack) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    assert _tls_connect(stack.broker, device_id, secret, stack.broker.tls_dir / "ca.crt")
    assert not _tls_connect(stack.broker, device_id, "wrong", stack.broker.tls_dir / "ca.crt")


@pytest_integration
def test_tls_handshake_fails_for_a_client_that_does_not_trust_the_ca(
    stack: TestStack, tmp_path: Path
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_connect(stack.broker, device_id, secret, None)  # the system's CAs only
