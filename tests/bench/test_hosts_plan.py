"""The multi-host layout's pure rules: hosts and roles, commands, env files, accounting; and
the user's server-sent-events parser."""

from __future__ import annotations

import ipaddress

import pytest

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench.hosts_user import sse_events
from fieldhub.bench.netlab import BENCH_NETWORK
from fieldhub.core.brokers import home_broker


def test_layout_has_every_tier_and_each_bridge_host_consumes_from_both_brokers() -> None:
    hosts = {host.name: host for host in plan.layout(devices=1000, interval_s=5)}
    assert {"db", "broker-1", "broker-2", "bridge-1", "bridge-2", "web-1", "web-2", "nginx",
            "worker", "load", "ops"} <= hosts.keys()  # fmt: skip
    for name, instance in (("bridge-1", "1"), ("bridge-2", "2")):
        params = [dict(role.params) for role in hosts[name].roles]
        assert {p["broker"] for p in params} == set(plan.BROKERS)
        assert {p["instance"] for p in params} == {instance}
        # Two processes on one host: each needs its own metrics port.
        assert len({p["metrics_port"] for p in params}) == len(params)
    assert [r.unit for r in hosts["broker-2"].roles] == ["mosquitto", "fieldhub-auth-sync@broker-2"]
    assert [r.unit for r in hosts["bridge-1"].roles] == [
        "fieldhub-bridge@1-broker-1",
        "fieldhub-bridge@1-broker-2",
    ]
    assert ipaddress.ip_network(plan.SUBNET).subnet_of(BENCH_NETWORK)


def test_a_role_command_is_its_exec_start_line_filled_in() -> None:
    params = (("instance", "2"), ("broker", "broker-1"), ("metrics_port", "9108"))
    bridge = plan.Role("bridge", params)
    values = {"venv": "/opt/fieldhub", "home": "/srv/h", "address": "198.18.0.14"}
    assert bridge.command(values) == [
        "/opt/fieldhub/bin/fieldhub", "bridge", "--instance", "2", "--broker", "broker-1",
        "--metrics-port", "9108",
    ]  # fmt: skip
    assert plan.Role("web").command(values)[-2:] == ["--bind", "198.18.0.14:8000"]
    with pytest.raises(ValueError, match="role bridge needs a value for 'instance'"):
        plan.Role("bridge").command(values)


def test_env_files_give_each_host_what_its_roles_need() -> None:
    addresses = {name: f"198.18.0.{10 + i}" for i, name in enumerate(
        ("db", "broker-1", "broker-2", "bridge-1", "web-1", "web-2", "nginx"))}  # fmt: skip
    secrets = plan.Secrets("db pass/with:chars", "bridge-secret", "k" * 48)
    web = plan.host_env("web-1", addresses, secrets, "/srv/web-1")
    assert web["FIELDHUB_ENV"] == "production"
    assert web["DATABASE_URL"] == (
        "postgresql://fieldhub:db%20pass%2Fwith%3Achars@198.18.0.10:5432/fieldhub"
    )
    assert web["FIELDHUB_BROKERS"] == (
        "broker-1=mqtts://198.18.0.11:8883,broker-2=mqtts://198.18.0.12:8883"
    )
    assert web["FIELDHUB_WEB_HOST"] == "198.18.0.14"
    broker = plan.host_env("broker-2", addresses, secrets, "/srv/broker-2")
    assert broker["FIELDHUB_MOSQUITTO_PID_FILE"] == "/srv/broker-2/mosquitto/mosquitto.pid"
    # The database and nginx hosts run no fieldhub process: no secrets there.
    assert plan.host_env("db", addresses, secrets, "/srv/db") == {"FIELDHUB_HOME": "/srv/db"}
    assert "FIELDHUB_SECRET_KEY" not in plan.host_env("nginx", addresses, secrets, "/srv/n")


def test_env_file_round_trip_and_systemd_syntax() -> None:
    env = {"A": "1", "DATABASE_URL": "postgresql://u:p@h:5432/d", "EMPTY": ""}
    assert plan.parse_env_file(plan.render_env_file(env)) == env
    text = "# comment\n; also a comment\n\nPLAIN=x y\nQUOTED='single'\n  SPACED = v  \n"
    assert plan.parse_env_file(text) == {"PLAIN": "x y", "QUOTED": "single", "SPACED": "v"}
    with pytest.raises(ValueError, match="line 2: 'not a pair' is not KEY=VALUE"):
        plan.parse_env_file("A=1\nnot a pair\n")
    with pytest.raises(ValueError, match="quotes"):
        plan.render_env_file({"A": 'say "hi"'})


def test_tally_counts_per_device_and_message() -> None:
    acked = [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1), ("d2", 2)]
    stored = [("d1", 1, 1), ("d1", 2, 2), ("d2", 1, 1), ("d2", 2, 1), ("d2", 3, 1)]
    result = plan.tally(acked, stored)
    assert result == plan.Tally(
        published=5,
        stored=5,
        lost=1,  # d1/3
        doubled=1,  # d1/2 twice
        stored_unacknowledged=1,  # d2/3: stored, its PUBACK never reached the device
        devices_with_losses=1,
    )
    assert plan.tally(acked, [(d, s, 1) for d, s in acked]).lost == 0


def test_a_torn_ledger_line_is_not_an_acknowledged_message() -> None:
    assert plan.parse_ledger("d1 1 1700000000000\nd1 2 1700000001000\nd1 3 17000") == [
        ("d1", 1, 1700000000000),
        ("d1", 2, 1700000001000),
    ]


def test_longest_gap_and_percentiles() -> None:
    assert plan.longest_gap([11.0, 12.0, 16.5], 10.0, 20.0) == 4.5
    assert plan.longest_gap([], 10.0, 20.0) == 10.0
    assert plan.percentile([], 0.5) is None
    assert plan.percentile([3.0], 0.95) == 3.0
    assert plan.percentile([float(n) for n in range(1, 101)], 0.5) == pytest.approx(50.5)


def test_devices_per_broker_follows_the_registrys_homing() -> None:
    chosen = plan.devices_per_broker(1000, per_broker=2)
    for broker, devices in chosen.items():
        assert len(devices) == 2
        assert all(home_broker(d, plan.BROKERS) == broker for d in devices)


def test_server_sent_events_are_parsed_as_eventsource_does() -> None:
    stream = [
        b"retry: 2000\n", b"\n",
        b"event: hello\n", b'data: {"device_id": "d1"}\n', b"\n",
        b": keepalive\n", b"\n",
        b"event: readings\n", b"data: [1,\n", b"data: 2]\n", b"\n",
    ]  # fmt: skip
    assert list(sse_events(iter(stream))) == [
        ("retry", "2000"),
        ("hello", '{"device_id": "d1"}'),
        ("readings", "[1,\n2]"),
    ]
